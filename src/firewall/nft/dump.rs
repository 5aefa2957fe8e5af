//! Rules as the kernel dumps them, decoded straight from their netlink
//! attributes (`linux/netfilter/nf_tables.h`). Going through libnftnl cost
//! an allocation per attribute and expression, and on a table of 2000 rules
//! parsing was half the time of a read — and every `rules apply` that
//! replaces rules reads the table twice (before, and to verify after).
//! Chains, a handful per table, still go through libnftnl
//! ([`super::sys::parse_chain`]).
//!
//! Only what lowport writes is decoded; an expression with any attribute
//! lowport never sets becomes [`Expr::Other`], so a rule someone else
//! changed is never mistaken for one of ours.

use std::io;

use super::netlink::{Attr, Attrs, Msg};
use super::sys::{Expr, KernelRule};

// enum nft_rule_attributes, nft_list_attributes, nft_expr_attributes,
// nft_data_attributes, nft_verdict_attributes.
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

// Per expression (enum nft_<name>_attributes).
const META_DREG: u16 = 1;
const META_KEY: u16 = 2;
const CMP_SREG: u16 = 1;
const CMP_OP: u16 = 2;
const CMP_DATA: u16 = 3;
const PAYLOAD_DREG: u16 = 1;
const PAYLOAD_BASE: u16 = 2;
const PAYLOAD_OFFSET: u16 = 3;
const PAYLOAD_LEN: u16 = 4;
const FIB_DREG: u16 = 1;
const FIB_RESULT: u16 = 2;
const FIB_FLAGS: u16 = 3;
const CT_DREG: u16 = 1;
const CT_KEY: u16 = 2;
const BITWISE_SREG: u16 = 1;
const BITWISE_DREG: u16 = 2;
const BITWISE_LEN: u16 = 3;
const BITWISE_MASK: u16 = 4;
const BITWISE_XOR: u16 = 5;
const BITWISE_OP: u16 = 6;
const IMMEDIATE_DREG: u16 = 1;
const IMMEDIATE_DATA: u16 = 2;
const REDIR_REG_PROTO_MIN: u16 = 1;
const REDIR_REG_PROTO_MAX: u16 = 2;
const REDIR_FLAGS: u16 = 3;
const NAT_TYPE: u16 = 1;
const NAT_FAMILY: u16 = 2;
const NAT_REG_ADDR_MIN: u16 = 3;
const NAT_REG_ADDR_MAX: u16 = 4;
const NAT_REG_PROTO_MIN: u16 = 5;
const NAT_REG_PROTO_MAX: u16 = 6;
const NAT_FLAGS: u16 = 7;
const MASQ_FLAGS: u16 = 1;

/// `NFT_BITWISE_BOOL`: mask-and-xor, the only bitwise operation we write.
const NFT_BITWISE_BOOL: u32 = 0;
/// `NF_NAT_RANGE_MAP_IPS`: the kernel adds it to a `nat` expression that
/// has an address; lowport's rules never set it themselves.
const NF_NAT_RANGE_MAP_IPS: u32 = 1;

/// Decode an `NFT_MSG_NEWRULE` message from a dump.
pub(crate) fn parse_rule(msg: &Msg<'_>) -> io::Result<KernelRule> {
    let mut rule = KernelRule {
        table: String::new(),
        chain: String::new(),
        exprs: Vec::new(),
        userdata: Vec::new(),
    };
    for a in msg.nf_attrs() {
        match a.ty {
            NFTA_RULE_TABLE => rule.table = string(&a),
            NFTA_RULE_CHAIN => rule.chain = string(&a),
            NFTA_RULE_USERDATA => rule.userdata = a.data.to_vec(),
            NFTA_RULE_EXPRESSIONS => {
                rule.exprs = a
                    .nested()
                    .filter(|e| e.ty == NFTA_LIST_ELEM)
                    .map(|e| expr(&e))
                    .collect();
            }
            _ => {}
        }
    }
    Ok(rule)
}

/// A NUL-terminated string attribute.
fn string(a: &Attr<'_>) -> String {
    let bytes = a.data.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(bytes).into_owned()
}

/// One expression's attributes by number. Numbers past the table (none of
/// the expressions lowport writes has them) only mark `present`.
struct Fields<'a> {
    by_type: [Option<Attr<'a>>; 16],
    /// Bit n: attribute n is there; bit 15 also stands for any higher one.
    present: u16,
}

impl<'a> Fields<'a> {
    fn new(attrs: Option<Attrs<'a>>) -> Fields<'a> {
        let mut f = Fields {
            by_type: [None; 16],
            present: 0,
        };
        for a in attrs.into_iter().flatten() {
            let i = usize::from(a.ty.min(15));
            f.by_type[i] = Some(a);
            f.present |= 1 << i;
        }
        f
    }

    /// A u32 attribute (network byte order, exactly four bytes).
    fn u32(&self, ty: u16) -> Option<u32> {
        let a = self.by_type.get(usize::from(ty))?.as_ref()?;
        (a.data.len() == 4).then(|| a.be32()).flatten()
    }

    /// The bytes of a data attribute holding a value (not a verdict).
    fn value(&self, ty: u16) -> Option<Vec<u8>> {
        let a = self.by_type.get(usize::from(ty))?.as_ref()?;
        let mut inner = a.nested();
        let v = inner.next()?;
        (v.ty == NFTA_DATA_VALUE && inner.next().is_none()).then(|| v.data.to_vec())
    }

    /// Only attributes among `allowed` are there.
    fn only(&self, allowed: &[u16]) -> bool {
        let mask = allowed.iter().fold(0u16, |m, &a| m | 1 << a);
        self.present & !mask == 0
    }

    fn has(&self, ty: u16) -> bool {
        self.present & 1 << ty != 0
    }

    fn listed(&self) -> Vec<u16> {
        (0..16).filter(|&i| self.present & 1 << i != 0).collect()
    }
}

fn expr(elem: &Attr<'_>) -> Expr {
    let attrs = elem.nested();
    let Some(name) = attrs.clone().get(NFTA_EXPR_NAME).map(|a| string(&a)) else {
        return Expr::Other("unnamed expression".into());
    };
    let f = Fields::new(attrs.get(NFTA_EXPR_DATA).map(|d| d.nested()));
    let decoded = match name.as_str() {
        "meta" if f.only(&[META_KEY, META_DREG]) => (|| {
            Some(Expr::Meta {
                key: f.u32(META_KEY)?,
                dreg: f.u32(META_DREG)?,
            })
        })(),
        "cmp" if f.only(&[CMP_SREG, CMP_OP, CMP_DATA]) => (|| {
            Some(Expr::Cmp {
                sreg: f.u32(CMP_SREG)?,
                op: f.u32(CMP_OP)?,
                data: f.value(CMP_DATA)?,
            })
        })(),
        "payload" if f.only(&[PAYLOAD_DREG, PAYLOAD_BASE, PAYLOAD_OFFSET, PAYLOAD_LEN]) => (|| {
            Some(Expr::Payload {
                base: f.u32(PAYLOAD_BASE)?,
                offset: f.u32(PAYLOAD_OFFSET)?,
                len: f.u32(PAYLOAD_LEN)?,
                dreg: f.u32(PAYLOAD_DREG)?,
            })
        })(
        ),
        "fib" if f.only(&[FIB_DREG, FIB_RESULT, FIB_FLAGS]) => (|| {
            Some(Expr::Fib {
                flags: f.u32(FIB_FLAGS)?,
                result: f.u32(FIB_RESULT)?,
                dreg: f.u32(FIB_DREG)?,
            })
        })(),
        "ct" if f.only(&[CT_DREG, CT_KEY]) => (|| {
            Some(Expr::Ct {
                key: f.u32(CT_KEY)?,
                dreg: f.u32(CT_DREG)?,
            })
        })(),
        "bitwise"
            if f.u32(BITWISE_OP).unwrap_or(NFT_BITWISE_BOOL) == NFT_BITWISE_BOOL
                && f.only(&[
                    BITWISE_SREG,
                    BITWISE_DREG,
                    BITWISE_LEN,
                    BITWISE_MASK,
                    BITWISE_XOR,
                    BITWISE_OP,
                ]) =>
        {
            (|| {
                Some(Expr::Bitwise {
                    sreg: f.u32(BITWISE_SREG)?,
                    dreg: f.u32(BITWISE_DREG)?,
                    len: f.u32(BITWISE_LEN)?,
                    mask: f.value(BITWISE_MASK)?,
                    xor: f.value(BITWISE_XOR)?,
                })
            })()
        }
        "immediate" if f.only(&[IMMEDIATE_DREG, IMMEDIATE_DATA]) => immediate(&f),
        "redir" if f.only(&[REDIR_REG_PROTO_MIN, REDIR_REG_PROTO_MAX, REDIR_FLAGS]) => (|| {
            let min = f.u32(REDIR_REG_PROTO_MIN)?;
            // The kernel reports max = min when only min was sent.
            let max = f.u32(REDIR_REG_PROTO_MAX).unwrap_or(min);
            (max == min).then_some(Expr::Redir {
                reg_proto: min,
                flags: f.u32(REDIR_FLAGS).unwrap_or(0),
            })
        })(),
        "nat"
            if f.only(&[
                NAT_TYPE,
                NAT_FAMILY,
                NAT_REG_ADDR_MIN,
                NAT_REG_ADDR_MAX,
                NAT_REG_PROTO_MIN,
                NAT_REG_PROTO_MAX,
                NAT_FLAGS,
            ]) =>
        {
            (|| {
                let addr = f.u32(NAT_REG_ADDR_MIN)?;
                let proto = f.u32(NAT_REG_PROTO_MIN)?;
                let same = f.u32(NAT_REG_ADDR_MAX).unwrap_or(addr) == addr
                    && f.u32(NAT_REG_PROTO_MAX).unwrap_or(proto) == proto;
                same.then_some(Expr::Nat {
                    nat_type: f.u32(NAT_TYPE)?,
                    family: f.u32(NAT_FAMILY)?,
                    reg_addr: addr,
                    reg_proto: proto,
                    flags: f.u32(NAT_FLAGS).unwrap_or(0) & !NF_NAT_RANGE_MAP_IPS,
                })
            })()
        }
        "masq" if f.only(&[MASQ_FLAGS]) && f.u32(MASQ_FLAGS).unwrap_or(0) == 0 => Some(Expr::Masq),
        _ => None,
    };
    decoded.unwrap_or_else(|| {
        Expr::Other(format!(
            "{name} expression with attributes {:?}",
            f.listed()
        ))
    })
}

/// `immediate`: a value into a register, or a verdict (accept, drop; a
/// jump or goto names a chain and is not lowport's).
fn immediate(f: &Fields<'_>) -> Option<Expr> {
    let dreg = f.u32(IMMEDIATE_DREG)?;
    if !f.has(IMMEDIATE_DATA) {
        return None;
    }
    if let Some(data) = f.value(IMMEDIATE_DATA) {
        return Some(Expr::Immediate { dreg, data });
    }
    let data = f.by_type[usize::from(IMMEDIATE_DATA)]?;
    let verdict = data.nested().get(NFTA_DATA_VERDICT)?;
    let mut inner = verdict.nested();
    let code = inner.next()?;
    if code.ty != NFTA_VERDICT_CODE || code.data.len() != 4 || inner.next().is_some() {
        return None;
    }
    Some(Expr::Verdict {
        code: code.be32()? as i32,
    })
}

#[cfg(test)]
mod tests {
    use super::super::netlink::{align4, messages, Request};
    use super::*;

    const NESTED: u16 = 0x8000;

    /// One attribute, padded to four bytes.
    fn nla(ty: u16, data: &[u8]) -> Vec<u8> {
        let len = u16::try_from(4 + data.len()).expect("small attribute");
        let mut out = Vec::new();
        out.extend(len.to_ne_bytes());
        out.extend(ty.to_ne_bytes());
        out.extend(data);
        out.resize(out.len().div_ceil(4) * 4, 0);
        out
    }

    fn u32_attr(ty: u16, v: u32) -> Vec<u8> {
        nla(ty, &v.to_be_bytes())
    }

    /// A rule in table t, chain c, with these (name, attributes) expressions.
    fn rule(exprs: &[(&str, Vec<u8>)]) -> KernelRule {
        let mut list = Vec::new();
        for (name, data) in exprs {
            let mut elem = nla(NFTA_EXPR_NAME, format!("{name}\0").as_bytes());
            elem.extend(nla(NFTA_EXPR_DATA | NESTED, data));
            list.extend(nla(NFTA_LIST_ELEM | NESTED, &elem));
        }
        let raw = Request::new(10, 6, 0, 1, 1)
            .attr(NFTA_RULE_TABLE, b"t\0")
            .attr(NFTA_RULE_CHAIN, b"c\0")
            .attr_raw(&nla(NFTA_RULE_EXPRESSIONS | NESTED, &list))
            .finish();
        let msg = messages(&raw)
            .next()
            .expect("a message")
            .expect("well formed");
        parse_rule(&msg).expect("parsed")
    }

    #[test]
    fn what_lowport_writes_decodes_and_anything_more_is_other() {
        let meta = [u32_attr(META_DREG, 1), u32_attr(META_KEY, 15)].concat();
        let r = rule(&[("meta", meta.clone())]);
        assert_eq!((r.table.as_str(), r.chain.as_str()), ("t", "c"));
        assert_eq!(r.exprs, [Expr::Meta { key: 15, dreg: 1 }]);

        // `meta set` (a source register), a counter, a jump: not lowport's.
        let meta_set = [meta, u32_attr(3, 1)].concat();
        let counter = [nla(1, &[0; 8]), nla(2, &[0; 8])].concat();
        let verdict = nla(
            NFTA_DATA_VERDICT | NESTED,
            &[
                u32_attr(NFTA_VERDICT_CODE, (-3i32) as u32),
                nla(2, b"other\0"),
            ]
            .concat(),
        );
        let jump = [
            u32_attr(IMMEDIATE_DREG, 0),
            nla(IMMEDIATE_DATA | NESTED, &verdict),
        ]
        .concat();
        let r = rule(&[
            ("meta", meta_set),
            ("counter", counter),
            ("immediate", jump),
        ]);
        assert!(
            r.exprs.iter().all(|e| matches!(e, Expr::Other(_))),
            "{:?}",
            r.exprs
        );

        // A plain drop is a verdict lowport writes.
        let drop = nla(NFTA_DATA_VERDICT | NESTED, &u32_attr(NFTA_VERDICT_CODE, 0));
        let r = rule(&[(
            "immediate",
            [
                u32_attr(IMMEDIATE_DREG, 0),
                nla(IMMEDIATE_DATA | NESTED, &drop),
            ]
            .concat(),
        )]);
        assert_eq!(r.exprs, [Expr::Verdict { code: 0 }]);
    }

    fn decoded(name: &str, data: &[u8]) -> Expr {
        let r = rule(&[(name, data.to_vec())]);
        assert_eq!(r.exprs.len(), 1, "{name}");
        r.exprs[0].clone()
    }

    /// `data` with attribute `ty` replaced by `attr` (added when missing).
    fn with_attr(data: &[u8], ty: u16, attr: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut done = false;
        for a in Attrs::new(data) {
            if a.ty == ty {
                out.extend_from_slice(attr);
                done = true;
            } else {
                out.extend_from_slice(a.raw);
                out.resize(align4(out.len()), 0);
            }
        }
        if !done {
            out.extend_from_slice(attr);
        }
        out
    }

    /// Every expression (name, attributes) of the rules lowport writes for
    /// every shape of rule, as its batch sends them.
    fn lowport_exprs() -> Vec<(String, Vec<u8>)> {
        let rs = super::super::tests::every_shape();
        let bytes = super::super::batch_bytes_for_fuzzing(&rs).expect("a batch");
        let newrule = (libc::NFNL_SUBSYS_NFTABLES as u16) << 8 | libc::NFT_MSG_NEWRULE as u16;
        let mut out = Vec::new();
        for msg in messages(&bytes) {
            let msg = msg.expect("well formed");
            if msg.ty != newrule {
                continue;
            }
            let list = msg
                .nf_attrs()
                .get(NFTA_RULE_EXPRESSIONS)
                .expect("expressions");
            for elem in list.nested() {
                let attrs = elem.nested();
                let name = string(&attrs.clone().get(NFTA_EXPR_NAME).expect("a name"));
                let data = attrs.get(NFTA_EXPR_DATA).expect("data").data.to_vec();
                if !out.contains(&(name.clone(), data.clone())) {
                    out.push((name, data));
                }
            }
        }
        out
    }

    fn lowport_expr(name: &str, pick: impl Fn(&Expr) -> bool) -> Vec<u8> {
        lowport_exprs()
            .into_iter()
            .find(|(n, d)| n == name && pick(&decoded(n, d)))
            .unwrap_or_else(|| panic!("lowport writes no such {name}"))
            .1
    }

    /// A rule someone changed by adding one attribute to any expression —
    /// a `meta set`, a payload write, a bitwise shift, a nat range, a jump —
    /// must never read as one of lowport's.
    #[test]
    fn one_attribute_more_in_any_expression_lowport_writes_is_not_lowports() {
        let exprs = lowport_exprs();
        let mut names: Vec<&str> = exprs.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names,
            [
                "bitwise",
                "cmp",
                "ct",
                "fib",
                "immediate",
                "masq",
                "meta",
                "nat",
                "payload",
                "redir"
            ]
        );
        for (name, data) in &exprs {
            let ours = decoded(name, data);
            assert!(!matches!(ours, Expr::Other(_)), "{name}: {ours:?}");
            let present: Vec<u16> = Attrs::new(data).map(|a| a.ty).collect();
            for ty in (1..=16).chain([40]) {
                // Not 0: zero flags or a bitwise operation 0 are what
                // lowport's expressions mean without the attribute.
                if present.contains(&ty) {
                    continue;
                }
                let more = with_attr(data, ty, &u32_attr(ty, 0x5a5a));
                let got = decoded(name, &more);
                assert!(
                    matches!(got, Expr::Other(_)),
                    "{name} with attribute {ty} more decoded as {got:?}"
                );
            }
        }
    }

    /// What the kernel echoes back for lowport's own expressions reads the
    /// same; any other value of the same attributes does not.
    #[test]
    fn kernel_echoes_read_as_lowports_and_other_values_do_not() {
        // redir: the kernel adds max = min.
        let redir = lowport_expr("redir", |_| true);
        let ours = decoded("redir", &redir);
        let min = Attrs::new(&redir)
            .get(REDIR_REG_PROTO_MIN)
            .unwrap()
            .be32()
            .unwrap();
        let echo = with_attr(
            &redir,
            REDIR_REG_PROTO_MAX,
            &u32_attr(REDIR_REG_PROTO_MAX, min),
        );
        assert_eq!(decoded("redir", &echo), ours);
        let range = with_attr(
            &redir,
            REDIR_REG_PROTO_MAX,
            &u32_attr(REDIR_REG_PROTO_MAX, min + 1),
        );
        assert!(matches!(decoded("redir", &range), Expr::Other(_)));

        // nat: the kernel adds the max registers and the map-IPs flag.
        let nat = lowport_expr("nat", |_| true);
        let ours = decoded("nat", &nat);
        let reg = |ty| Attrs::new(&nat).get(ty).unwrap().be32().unwrap();
        let (addr, proto, flags) = (
            reg(NAT_REG_ADDR_MIN),
            reg(NAT_REG_PROTO_MIN),
            reg(NAT_FLAGS),
        );
        let echo = with_attr(&nat, NAT_REG_ADDR_MAX, &u32_attr(NAT_REG_ADDR_MAX, addr));
        let echo = with_attr(
            &echo,
            NAT_REG_PROTO_MAX,
            &u32_attr(NAT_REG_PROTO_MAX, proto),
        );
        let echo = with_attr(
            &echo,
            NAT_FLAGS,
            &u32_attr(NAT_FLAGS, flags | NF_NAT_RANGE_MAP_IPS),
        );
        assert_eq!(decoded("nat", &echo), ours);
        for (ty, v) in [(NAT_REG_ADDR_MAX, addr + 1), (NAT_REG_PROTO_MAX, proto + 1)] {
            let range = with_attr(&nat, ty, &u32_attr(ty, v));
            assert!(matches!(decoded("nat", &range), Expr::Other(_)), "{ty}");
        }
        // Another flag (a random port, say) is another rule.
        let other = with_attr(&nat, NAT_FLAGS, &u32_attr(NAT_FLAGS, flags | 1 << 2));
        assert_ne!(decoded("nat", &other), ours);

        // bitwise: mask-and-xor only, not a shift.
        let bitwise = lowport_expr("bitwise", |_| true);
        let ours = decoded("bitwise", &bitwise);
        let bool_op = with_attr(
            &bitwise,
            BITWISE_OP,
            &u32_attr(BITWISE_OP, NFT_BITWISE_BOOL),
        );
        assert_eq!(decoded("bitwise", &bool_op), ours);
        let shift = with_attr(&bitwise, BITWISE_OP, &u32_attr(BITWISE_OP, 1));
        assert!(matches!(decoded("bitwise", &shift), Expr::Other(_)));

        // masq: no flags (zero is the same), not a port range or random.
        assert_eq!(decoded("masq", &u32_attr(MASQ_FLAGS, 0)), Expr::Masq);
        assert!(matches!(
            decoded("masq", &u32_attr(MASQ_FLAGS, 4)),
            Expr::Other(_)
        ));

        // A u32 that is not four bytes, a value that is a verdict or two
        // values in one: not lowport's.
        let meta = lowport_expr("meta", |_| true);
        let long = with_attr(&meta, META_KEY, &nla(META_KEY, &[0; 8]));
        assert!(matches!(decoded("meta", &long), Expr::Other(_)));
        let value = lowport_expr("immediate", |e| matches!(e, Expr::Immediate { .. }));
        let Expr::Immediate { dreg, data } = decoded("immediate", &value) else {
            unreachable!()
        };
        let two = nla(
            IMMEDIATE_DATA | NESTED,
            &[nla(NFTA_DATA_VALUE, &data), nla(NFTA_DATA_VALUE, &data)].concat(),
        );
        let two_values = with_attr(&value, IMMEDIATE_DATA, &two);
        assert!(matches!(decoded("immediate", &two_values), Expr::Other(_)));
        let verdict_elsewhere = nla(
            IMMEDIATE_DATA | NESTED,
            &nla(NFTA_DATA_VERDICT | NESTED, &u32_attr(NFTA_VERDICT_CODE, 0)),
        );
        let reg_verdict = with_attr(&value, IMMEDIATE_DATA, &verdict_elsewhere);
        assert_eq!(
            decoded("immediate", &reg_verdict),
            Expr::Verdict { code: 0 },
            "dreg {dreg}"
        );
        let short_code = nla(
            IMMEDIATE_DATA | NESTED,
            &nla(NFTA_DATA_VERDICT | NESTED, &nla(NFTA_VERDICT_CODE, &[0; 2])),
        );
        let short = with_attr(&value, IMMEDIATE_DATA, &short_code);
        assert!(matches!(decoded("immediate", &short), Expr::Other(_)));
        // A verdict that names a chain (4 bytes, like a code) is not one.
        let chain_only = nla(
            IMMEDIATE_DATA | NESTED,
            &nla(NFTA_DATA_VERDICT | NESTED, &nla(2, b"abc\0")),
        );
        let chain = with_attr(&value, IMMEDIATE_DATA, &chain_only);
        assert!(matches!(decoded("immediate", &chain), Expr::Other(_)));
        let no_data = [u32_attr(IMMEDIATE_DREG, 0)].concat();
        assert!(matches!(decoded("immediate", &no_data), Expr::Other(_)));
    }

    /// The rule's comment (nft's userdata) comes back with the rule: it
    /// names the mapping in `rules show`.
    #[test]
    fn a_rule_keeps_its_comment() {
        let udata = b"\x00\x04web\x00";
        let raw = Request::new(10, 6, 0, 1, 1)
            .attr(NFTA_RULE_TABLE, b"lowport\0")
            .attr(NFTA_RULE_CHAIN, b"prerouting\0")
            .attr(NFTA_RULE_USERDATA, udata)
            .finish();
        let msg = messages(&raw).next().unwrap().unwrap();
        let r = parse_rule(&msg).unwrap();
        assert_eq!(r.userdata, udata);
        assert_eq!(
            (r.table.as_str(), r.chain.as_str()),
            ("lowport", "prerouting")
        );
        assert!(r.exprs.is_empty());
    }
}

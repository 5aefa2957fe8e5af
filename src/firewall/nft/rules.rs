//! The rules lowport writes in `table inet lowport`: its base chains, and
//! each rule built once, as a `RuleSpec` that holds both the netlink
//! expressions and the `nft` text they stand for, so `apply` and `render`
//! (the `--dry-run` script) cannot drift apart. The expressions are exactly
//! what `nft` 1.0.6 itself generates for that text. `validate` refuses a
//! rule set nft could not express before anything is sent.

use std::ffi::CString;
use std::fmt::Write as _;
use std::net::IpAddr;

use nftnl::{Chain, ChainType, Policy, Table};

use super::sys::{Expr, KernelChain};
use crate::firewall::plan::{
    Family, Hook, MasqRule, NatAction, NatRule, RuleSet, GUARD_PRIORITY, NAT_PRIORITY,
    SNAT_PRIORITY,
};
use crate::firewall::{FirewallError, TABLE};
use crate::mapping::L4;

/// Comment of the loopback guard rule.
pub const GUARD_COMMENT: &str = "lowport: drop 127.0.0.0/8 not from lo";

/// Longest rule comment, in bytes: what libnftnl's comment buffer holds
/// (128 bytes, with a 2-byte header and the terminating NUL).
pub const MAX_COMMENT: usize = 125;

// Kernel constants `libc` does not carry (linux/netfilter/nf_tables.h,
// nf_nat.h, nf_conntrack_common.h).
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;
const IPS_DST_NAT: u32 = 1 << 5;
const IFNAMSIZ: usize = 16;

pub(super) const REG1: u32 = libc::NFT_REG_1 as u32;
pub(super) const REG2: u32 = libc::NFT_REG_2 as u32;

pub(super) fn invalid(rule: &str, why: &str) -> FirewallError {
    FirewallError::Other(format!(
        "cannot express `{rule}` as an nftables rule: {why}"
    ))
}

/// Reject rule sets nft could not express, or that would not read back as
/// themselves.
pub(super) fn validate(rules: &RuleSet) -> Result<(), FirewallError> {
    let check_comment = |text: &str, c: &str| {
        if c.len() > MAX_COMMENT {
            return Err(invalid(
                text,
                &format!("comments are at most {MAX_COMMENT} bytes"),
            ));
        }
        if c.contains(['"', '\0', '\n', '\r']) {
            return Err(invalid(
                text,
                "comments cannot hold quotes, NUL bytes or line breaks",
            ));
        }
        Ok(())
    };
    for r in &rules.nat {
        let text = nat_rule(r).text;
        if let Some(addr) = r.daddr {
            if r.family != Some(Family::of(addr)) {
                return Err(invalid(
                    &text,
                    "the family must be that of the destination address",
                ));
            }
        }
        if let NatAction::Dnat { addr, .. } = r.action {
            if r.family != Some(Family::of(addr)) {
                return Err(invalid(
                    &text,
                    "dnat needs the family of its target address",
                ));
            }
        }
        check_comment(&text, &r.comment)?;
    }
    for m in &rules.masquerade {
        check_comment(&masq_rule(m).text, &m.comment)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Chains

/// One of the base chains lowport may create.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ChainSpec {
    pub(super) name: &'static str,
    kind: ChainType,
    pub(super) hook: nftnl::Hook,
    pub(super) priority: i32,
}

/// Remote clients: destination NAT before routing.
const PREROUTING: ChainSpec = ChainSpec {
    name: "prerouting",
    kind: ChainType::Nat,
    hook: nftnl::Hook::PreRouting,
    priority: NAT_PRIORITY,
};
/// Local clients: destination NAT of the host's own packets.
const OUTPUT: ChainSpec = ChainSpec {
    name: "output",
    kind: ChainType::Nat,
    hook: nftnl::Hook::Out,
    priority: NAT_PRIORITY,
};
/// Remote targets: masquerade so replies come back through this host.
const POSTROUTING: ChainSpec = ChainSpec {
    name: "postrouting",
    kind: ChainType::Nat,
    hook: nftnl::Hook::PostRouting,
    priority: SNAT_PRIORITY,
};
/// `route_localnet` guard: at raw priority, before conntrack and NAT.
const GUARD: ChainSpec = ChainSpec {
    name: "guard",
    kind: ChainType::Filter,
    hook: nftnl::Hook::PreRouting,
    priority: GUARD_PRIORITY,
};

pub(super) const ALL_CHAINS: [&ChainSpec; 4] = [&PREROUTING, &OUTPUT, &POSTROUTING, &GUARD];

impl ChainSpec {
    pub(super) fn kind_name(&self) -> &'static str {
        match self.kind {
            ChainType::Nat => "nat",
            ChainType::Filter => "filter",
            ChainType::Route => "route",
        }
    }

    fn hook_name(&self) -> &'static str {
        match self.hook {
            nftnl::Hook::PreRouting => "prerouting",
            nftnl::Hook::Out => "output",
            nftnl::Hook::PostRouting => "postrouting",
            nftnl::Hook::In => "input",
            nftnl::Hook::Forward => "forward",
            nftnl::Hook::Ingress => "ingress",
        }
    }

    pub(super) fn chain<'a>(&self, table: &'a Table) -> Chain<'a> {
        // Chain names are constants without NUL bytes.
        let mut chain = Chain::new(CString::new(self.name).unwrap_or_default(), table);
        chain.set_hook(self.hook, self.priority);
        chain.set_type(self.kind);
        chain.set_policy(Policy::Accept);
        chain
    }

    /// Does a chain the kernel listed match this spec exactly?
    pub(super) fn matches(&self, c: &KernelChain) -> bool {
        c.name == self.name
            && c.hook == Some(self.hook as u32)
            && c.prio == Some(self.priority)
            && c.kind.as_deref() == Some(self.kind_name())
            && c.policy == Some(libc::NF_ACCEPT as u32)
    }
}

/// The chains a rule set needs, each with its rules, in creation order.
/// A chain exists only when it has rules: an empty NAT chain would still
/// register NAT hooks for nothing.
pub(super) fn layout(rules: &RuleSet) -> Vec<(&'static ChainSpec, Vec<RuleSpec>)> {
    let mut out = Vec::new();
    let pre: Vec<RuleSpec> = rules.on(Hook::Prerouting).map(nat_rule).collect();
    let local: Vec<RuleSpec> = rules.on(Hook::Output).map(nat_rule).collect();
    let masq: Vec<RuleSpec> = rules.masquerade.iter().map(masq_rule).collect();
    for (spec, specs) in [(&PREROUTING, pre), (&OUTPUT, local), (&POSTROUTING, masq)] {
        if !specs.is_empty() {
            out.push((spec, specs));
        }
    }
    if rules.loopback_guard {
        out.push((&GUARD, vec![guard_rule()]));
    }
    out
}

// ---------------------------------------------------------------------------
// Rules: each helper is one nft phrase and the expressions nft makes of it.

/// A piece of a rule: its expressions and its nft text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Phrase {
    exprs: Vec<Expr>,
    text: String,
}

/// A whole rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RuleSpec {
    pub(super) exprs: Vec<Expr>,
    /// The nft line, comment included.
    pub(super) text: String,
    pub(super) comment: String,
}

impl RuleSpec {
    fn new(phrases: impl IntoIterator<Item = Phrase>, comment: &str) -> RuleSpec {
        let mut exprs = Vec::new();
        let mut words = Vec::new();
        for p in phrases {
            exprs.extend(p.exprs);
            words.push(p.text);
        }
        if !comment.is_empty() {
            words.push(format!("comment \"{comment}\""));
        }
        RuleSpec {
            exprs,
            text: words.join(" "),
            comment: comment.to_owned(),
        }
    }
}

fn phrase(text: impl Into<String>, exprs: Vec<Expr>) -> Phrase {
    Phrase {
        exprs,
        text: text.into(),
    }
}

pub(super) fn load_meta(key: i32) -> Expr {
    Expr::Meta {
        key: key as u32,
        dreg: REG1,
    }
}

fn cmp(op: i32, data: impl Into<Vec<u8>>) -> Expr {
    Expr::Cmp {
        sreg: REG1,
        op: op as u32,
        data: data.into(),
    }
}

pub(super) fn load_payload(base: i32, offset: u32, len: u32) -> Expr {
    Expr::Payload {
        base: base as u32,
        offset,
        len,
        dreg: REG1,
    }
}

fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => libc::NFPROTO_IPV4 as u8,
        Family::V6 => libc::NFPROTO_IPV6 as u8,
    }
}

fn ip_keyword(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The nfproto dependency nft inserts before anything family-specific in an
/// `inet` table.
fn nfproto_is(family: Family) -> Vec<Expr> {
    vec![
        load_meta(libc::NFT_META_NFPROTO),
        cmp(libc::NFT_CMP_EQ, [nfproto(family)]),
    ]
}

/// `meta nfproto ipv4|ipv6`
fn meta_nfproto(family: Family) -> Phrase {
    phrase(format!("meta nfproto {family}"), nfproto_is(family))
}

/// `fib daddr type local`: the destination is one of this host's addresses.
fn fib_daddr_local() -> Phrase {
    phrase(
        "fib daddr type local",
        vec![
            Expr::Fib {
                flags: NFTA_FIB_F_DADDR,
                result: NFT_FIB_RESULT_ADDRTYPE,
                dreg: REG1,
            },
            cmp(libc::NFT_CMP_EQ, u32::from(libc::RTN_LOCAL).to_ne_bytes()),
        ],
    )
}

/// `ip daddr A` / `ip6 daddr A` (with its nfproto dependency).
fn ip_daddr(addr: IpAddr) -> Phrase {
    let family = Family::of(addr);
    let (offset, len) = match addr {
        IpAddr::V4(_) => (16, 4),
        IpAddr::V6(_) => (24, 16),
    };
    let mut exprs = nfproto_is(family);
    exprs.push(load_payload(libc::NFT_PAYLOAD_NETWORK_HEADER, offset, len));
    exprs.push(cmp(libc::NFT_CMP_EQ, addr_bytes(addr)));
    phrase(format!("{} daddr {addr}", ip_keyword(family)), exprs)
}

/// `tcp dport P` / `udp dport P` (with its l4proto dependency).
fn l4_dport(l4: L4, port: u16) -> Phrase {
    phrase(
        format!("{l4} dport {port}"),
        vec![
            load_meta(libc::NFT_META_L4PROTO),
            cmp(libc::NFT_CMP_EQ, [l4.ip_proto()]),
            load_payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
            cmp(libc::NFT_CMP_EQ, port.to_be_bytes()),
        ],
    )
}

/// `redirect to :T`
fn redirect_to(port: u16) -> Phrase {
    phrase(
        format!("redirect to :{port}"),
        vec![
            Expr::Immediate {
                dreg: REG1,
                data: port.to_be_bytes().to_vec(),
            },
            Expr::Redir {
                reg_proto: REG1,
                flags: NF_NAT_RANGE_PROTO_SPECIFIED,
            },
        ],
    )
}

/// `dnat ip to A:T` / `dnat ip6 to [A]:T`
fn dnat_to(addr: IpAddr, port: u16) -> Phrase {
    let family = Family::of(addr);
    let target = match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    };
    phrase(
        format!("dnat {} to {target}", ip_keyword(family)),
        vec![
            Expr::Immediate {
                dreg: REG1,
                data: addr_bytes(addr),
            },
            Expr::Immediate {
                dreg: REG2,
                data: port.to_be_bytes().to_vec(),
            },
            Expr::Nat {
                nat_type: libc::NFT_NAT_DNAT as u32,
                family: u32::from(nfproto(family)),
                reg_addr: REG1,
                reg_proto: REG2,
                flags: NF_NAT_RANGE_PROTO_SPECIFIED,
            },
        ],
    )
}

/// `ct status dnat`: the connection's destination was translated.
fn ct_status_dnat() -> Phrase {
    phrase(
        "ct status dnat",
        vec![
            Expr::Ct {
                key: libc::NFT_CT_STATUS as u32,
                dreg: REG1,
            },
            Expr::Bitwise {
                sreg: REG1,
                dreg: REG1,
                len: 4,
                mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            cmp(libc::NFT_CMP_NEQ, [0u8; 4]),
        ],
    )
}

/// `masquerade`
fn masquerade() -> Phrase {
    phrase("masquerade", vec![Expr::Masq])
}

/// `iifname != "NAME"`
fn iifname_ne(name: &str) -> Phrase {
    let mut data = [0u8; IFNAMSIZ];
    let n = name.len().min(IFNAMSIZ - 1);
    data[..n].copy_from_slice(&name.as_bytes()[..n]);
    phrase(
        format!("iifname != \"{name}\""),
        vec![
            load_meta(libc::NFT_META_IIFNAME),
            cmp(libc::NFT_CMP_NEQ, data),
        ],
    )
}

/// `ip daddr 127.0.0.0/8` (nft loads and compares just the first byte).
fn ip_daddr_loopback_net() -> Phrase {
    let mut exprs = nfproto_is(Family::V4);
    exprs.push(load_payload(libc::NFT_PAYLOAD_NETWORK_HEADER, 16, 1));
    exprs.push(cmp(libc::NFT_CMP_EQ, [127u8]));
    phrase("ip daddr 127.0.0.0/8", exprs)
}

/// `drop`
fn drop_packet() -> Phrase {
    phrase(
        "drop",
        vec![Expr::Verdict {
            code: libc::NF_DROP,
        }],
    )
}

/// A destination NAT rule:
/// `[fib daddr type local] [meta nfproto F | ip daddr A] tcp dport P redirect to :T|dnat ...`.
pub(super) fn nat_rule(r: &NatRule) -> RuleSpec {
    let mut p = Vec::new();
    // Output rules only catch local destinations: the host's own
    // connections to port 80 of other machines must go out untouched.
    if r.hook == Hook::Output {
        p.push(fib_daddr_local());
    }
    match (r.daddr, r.family) {
        // `ip daddr` brings its own nfproto dependency.
        (Some(addr), _) => p.push(ip_daddr(addr)),
        (None, Some(family)) => p.push(meta_nfproto(family)),
        (None, None) => {}
    }
    p.push(l4_dport(r.l4, r.dport));
    p.push(match r.action {
        NatAction::Redirect { port } => redirect_to(port),
        NatAction::Dnat { addr, port } => dnat_to(addr, port),
    });
    RuleSpec::new(p, &r.comment)
}

/// `ct status dnat ip daddr A tcp dport P masquerade`: only connections we
/// sent on to a remote target, so no other traffic to that host changes.
pub(super) fn masq_rule(m: &MasqRule) -> RuleSpec {
    RuleSpec::new(
        [
            ct_status_dnat(),
            ip_daddr(m.daddr),
            l4_dport(m.l4, m.dport),
            masquerade(),
        ],
        &m.comment,
    )
}

/// `iifname != "lo" ip daddr 127.0.0.0/8 drop`: with `route_localnet` on,
/// neighbours could otherwise reach services bound to 127.0.0.1.
pub(super) fn guard_rule() -> RuleSpec {
    RuleSpec::new(
        [iifname_ne("lo"), ip_daddr_loopback_net(), drop_packet()],
        GUARD_COMMENT,
    )
}

// ---------------------------------------------------------------------------
// Render

/// The `nft -f` script equivalent to `apply`: the same add/delete/add
/// transaction, the same chains and rules.
pub fn render(rules: &RuleSet) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#!/usr/sbin/nft -f");
    let _ = writeln!(
        s,
        "# lowport: replace table inet {TABLE} in one transaction (add, delete, add)."
    );
    let _ = writeln!(s, "table inet {TABLE} {{}}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    for (i, (spec, specs)) in layout(rules).iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let _ = writeln!(s, "\tchain {} {{", spec.name);
        let _ = writeln!(
            s,
            "\t\ttype {} hook {} priority {}; policy accept;",
            spec.kind_name(),
            spec.hook_name(),
            spec.priority
        );
        for r in specs {
            let _ = writeln!(s, "\t\t{}", r.text);
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::super::tests::every_shape;
    use super::*;

    #[test]
    fn empty_rule_set_has_no_chains() {
        assert!(layout(&RuleSet::default()).is_empty());
    }

    #[test]
    fn rule_texts_read_like_nft() {
        let rs = every_shape();
        let texts: Vec<String> = layout(&rs)
            .into_iter()
            .flat_map(|(_, s)| s.into_iter().map(|r| r.text))
            .collect();
        assert_eq!(texts[0], "tcp dport 80 redirect to :8080 comment \"web\"");
        assert_eq!(
            texts[6],
            "meta nfproto ipv6 udp dport 80 dnat ip6 to [fd00::5]:8080 comment \"web\""
        );
        assert_eq!(
            texts[11],
            "fib daddr type local ip daddr 10.0.0.1 tcp dport 80 redirect to :8080 comment \"web\""
        );
        assert_eq!(
            texts[16],
            "ct status dnat ip daddr 10.0.0.5 tcp dport 8080 masquerade comment \"far\""
        );
        assert_eq!(
            texts[18],
            format!("iifname != \"lo\" ip daddr 127.0.0.0/8 drop comment \"{GUARD_COMMENT}\"")
        );
    }

    #[test]
    fn render_replaces_the_table_atomically() {
        let script = render(&every_shape());
        let lines: Vec<&str> = script.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines[0], "table inet lowport {}");
        assert_eq!(lines[1], "delete table inet lowport");
        assert_eq!(lines[2], "table inet lowport {");
        assert!(script.contains("\t\ttype nat hook output priority -105; policy accept;\n"));
        assert!(script.contains("\t\ttype filter hook prerouting priority -300; policy accept;\n"));
        assert!(script.contains("\t\ttype nat hook postrouting priority 95; policy accept;\n"));
    }

    #[test]
    fn invalid_rule_sets_are_refused_before_sending() {
        let mut rs = every_shape();
        rs.nat[0].comment = "say \"hi\"".into();
        assert!(validate(&rs).is_err());
        let mut rs = every_shape();
        rs.nat[0].comment = "x".repeat(MAX_COMMENT + 1);
        assert!(validate(&rs).is_err());
        let mut rs = every_shape();
        rs.nat[5].family = None; // dnat without a family
        assert!(validate(&rs).is_err());
        let mut rs = every_shape();
        rs.nat[3].family = Some(Family::V6); // v4 daddr in a v6 rule
        assert!(validate(&rs).is_err());
    }
}

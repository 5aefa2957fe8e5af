//! Reading lowport's table back: the kernel's chains and rules (as
//! [`super::dump`] decoded them) become the [`RuleSet`] they implement.
//! Each rule is recognised, rebuilt from what was recognised, and must then
//! match the kernel's expressions exactly; anything else is reported as
//! foreign.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::rules::{
    guard_rule, load_meta, load_payload, masq_rule, nat_rule, ALL_CHAINS, REG1, REG2,
};
use super::sys::{Expr, KernelChain, KernelRule};
use crate::firewall::plan::{Family, Hook, MasqRule, NatAction, NatRule, RuleSet};
use crate::mapping::L4;

/// nft's rule userdata TLV type for the comment.
const UDATA_COMMENT: u8 = nftnl::nftnl_sys::NFTNL_UDATA_RULE_COMMENT as u8;

/// The comment in nft's rule userdata: TLVs of (type u8, length u8, value),
/// type 0 being the comment, NUL-terminated.
fn udata_comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if ty == UDATA_COMMENT {
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

/// Kernel chains and rules → the rule set they implement, or a description
/// of the first thing lowport did not write.
pub(super) fn decode(chains: &[KernelChain], rules: &[KernelRule]) -> Result<RuleSet, String> {
    for c in chains {
        if !ALL_CHAINS.iter().any(|spec| spec.matches(c)) {
            return Err(format!(
                "chain {} (type {:?}, hook {:?}, priority {:?})",
                c.name, c.kind, c.hook, c.prio
            ));
        }
    }
    let mut set = RuleSet::default();
    let mut local = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let comment = udata_comment(&r.userdata).unwrap_or_default();
        let foreign = || {
            let shape: Vec<String> = r.exprs.iter().map(Expr::kind).collect();
            format!(
                "rule #{} in chain {} with comment \"{comment}\": [{}]",
                i + 1,
                r.chain,
                shape.join(", ")
            )
        };
        match r.chain.as_str() {
            "prerouting" | "output" => {
                let hook = if r.chain == "output" {
                    Hook::Output
                } else {
                    Hook::Prerouting
                };
                let rule = recognise_nat(hook, &r.exprs, &comment)
                    .filter(|n| nat_rule(n).exprs == r.exprs)
                    .ok_or_else(foreign)?;
                match hook {
                    Hook::Prerouting => set.nat.push(rule),
                    Hook::Output => local.push(rule),
                }
            }
            "postrouting" => {
                let rule = recognise_masq(&r.exprs, &comment)
                    .filter(|m| masq_rule(m).exprs == r.exprs)
                    .ok_or_else(foreign)?;
                set.masquerade.push(rule);
            }
            "guard" if !set.loopback_guard && r.exprs == guard_rule().exprs => {
                set.loopback_guard = true;
            }
            _ => return Err(foreign()),
        }
    }
    set.nat.extend(local);
    Ok(set)
}

/// Pairs (load, compare) in a rule, for picking values out.
fn compared<'a>(exprs: &'a [Expr], load: &Expr) -> Option<&'a [u8]> {
    exprs.windows(2).find_map(|w| match (&w[0], &w[1]) {
        (l, Expr::Cmp { data, .. }) if l == load => Some(data.as_slice()),
        _ => None,
    })
}

fn family_of_nfproto(data: &[u8]) -> Option<Family> {
    match data {
        [p] if i32::from(*p) == libc::NFPROTO_IPV4 => Some(Family::V4),
        [p] if i32::from(*p) == libc::NFPROTO_IPV6 => Some(Family::V6),
        _ => None,
    }
}

fn ip_from(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?))),
        _ => None,
    }
}

fn port_from(data: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(data.try_into().ok()?))
}

/// The match parts common to NAT and masquerade rules.
struct Matched {
    family: Option<Family>,
    daddr: Option<IpAddr>,
    l4: L4,
    dport: u16,
}

fn recognise_match(exprs: &[Expr]) -> Option<Matched> {
    let family = compared(exprs, &load_meta(libc::NFT_META_NFPROTO)).and_then(family_of_nfproto);
    let daddr = compared(
        exprs,
        &load_payload(libc::NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
    )
    .or_else(|| {
        compared(
            exprs,
            &load_payload(libc::NFT_PAYLOAD_NETWORK_HEADER, 24, 16),
        )
    })
    .and_then(ip_from);
    let l4 = match compared(exprs, &load_meta(libc::NFT_META_L4PROTO))? {
        [p] if *p == L4::Tcp.ip_proto() => L4::Tcp,
        [p] if *p == L4::Udp.ip_proto() => L4::Udp,
        _ => return None,
    };
    let dport = port_from(compared(
        exprs,
        &load_payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
    )?)?;
    Some(Matched {
        family,
        daddr,
        l4,
        dport,
    })
}

/// Read a NAT rule's values; the caller checks the shape by rebuilding it.
fn recognise_nat(hook: Hook, exprs: &[Expr], comment: &str) -> Option<NatRule> {
    let m = recognise_match(exprs)?;
    let imm = |reg: u32| {
        exprs.iter().find_map(|e| match e {
            Expr::Immediate { dreg, data } if *dreg == reg => Some(data.as_slice()),
            _ => None,
        })
    };
    let action = match exprs.last()? {
        Expr::Redir { .. } => NatAction::Redirect {
            port: port_from(imm(REG1)?)?,
        },
        Expr::Nat { .. } => NatAction::Dnat {
            addr: ip_from(imm(REG1)?)?,
            port: port_from(imm(REG2)?)?,
        },
        _ => return None,
    };
    Some(NatRule {
        hook,
        family: m.family,
        daddr: m.daddr,
        l4: m.l4,
        dport: m.dport,
        action,
        comment: comment.to_owned(),
    })
}

/// Read a masquerade rule's values; the caller checks the shape.
fn recognise_masq(exprs: &[Expr], comment: &str) -> Option<MasqRule> {
    let m = recognise_match(exprs)?;
    Some(MasqRule {
        daddr: m.daddr?,
        l4: m.l4,
        dport: m.dport,
        comment: comment.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::rules::{layout, validate};
    use super::super::tests::every_shape;
    use super::*;
    use crate::firewall::TABLE;

    fn as_kernel(rules: &RuleSet) -> (Vec<KernelChain>, Vec<KernelRule>) {
        let mut chains = Vec::new();
        let mut krules = Vec::new();
        for (spec, specs) in layout(rules) {
            chains.push(KernelChain {
                table: TABLE.into(),
                name: spec.name.into(),
                hook: Some(spec.hook as u32),
                prio: Some(spec.priority),
                kind: Some(spec.kind_name().into()),
                policy: Some(libc::NF_ACCEPT as u32),
            });
            for r in specs {
                let mut udata = vec![0u8, (r.comment.len() + 1) as u8];
                udata.extend_from_slice(r.comment.as_bytes());
                udata.push(0);
                krules.push(KernelRule {
                    table: TABLE.into(),
                    chain: spec.name.into(),
                    exprs: r.exprs.clone(),
                    userdata: udata,
                });
            }
        }
        (chains, krules)
    }

    #[test]
    fn every_shape_decodes_to_itself() {
        let rs = every_shape();
        validate(&rs).unwrap();
        let (chains, rules) = as_kernel(&rs);
        assert_eq!(decode(&chains, &rules).unwrap(), rs);
    }

    #[test]
    fn no_chains_and_no_rules_are_an_empty_rule_set() {
        assert_eq!(decode(&[], &[]).unwrap(), RuleSet::default());
    }

    #[test]
    fn unknown_shapes_are_foreign() {
        let rs = every_shape();
        let (chains, mut rules) = as_kernel(&rs);
        // A counter nft would print as `counter`: not lowport's.
        rules[3].exprs.insert(0, Expr::Other("counter".into()));
        let err = decode(&chains, &rules).unwrap_err();
        assert!(err.contains("rule #4 in chain prerouting"), "{err}");

        // Same values, different shape: a redirect without its l4proto check.
        let (chains, mut rules) = as_kernel(&rs);
        rules[0].exprs.drain(0..2);
        assert!(decode(&chains, &rules).is_err());

        // A chain at another priority.
        let (mut chains, rules) = as_kernel(&rs);
        chains[0].prio = Some(-100);
        assert!(decode(&chains, &rules)
            .unwrap_err()
            .contains("chain prerouting"));
    }

    #[test]
    fn comment_userdata_is_parsed_like_nft_writes_it() {
        assert_eq!(udata_comment(b"\x00\x04web\x00").as_deref(), Some("web"));
        assert_eq!(
            udata_comment(b"\x01\x01x\x00\x03ab\x00").as_deref(),
            Some("ab")
        );
        assert_eq!(udata_comment(b"\x00\x09short"), None);
        assert_eq!(udata_comment(b""), None);
    }
}

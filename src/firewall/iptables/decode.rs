//! Rebuilding a [`RuleSet`] from what `iptables-save` printed in lowport's
//! chains, in both families. A rule is lowport's only when writing it again
//! as lowport would gives the same words: anything someone added or changed
//! makes it foreign, so `apply` replaces it and `show` says so.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::parse::{tokenize, FamilyState};
use super::render::{guard_rule_spec, masq_rule_spec, nat_rule_spec};
use super::{CHAIN_GUARD, CHAIN_OUTPUT, CHAIN_POSTROUTING, CHAIN_PREROUTING};
use crate::firewall::plan::{Family, Hook, MasqRule, NatAction, NatRule, RuleSet};
use crate::firewall::FirewallError;
use crate::mapping::L4;

/// One of lowport's rules, decoded from its words.
#[derive(Debug, Default, PartialEq)]
struct Decoded {
    daddr: Option<(IpAddr, u8)>,
    not_lo: bool,
    l4: Option<L4>,
    dport: Option<u16>,
    local: bool,
    ct_dnat: bool,
    comment: Option<String>,
    target: Option<String>,
    to_ports: Option<u16>,
    to_dest: Option<std::net::SocketAddr>,
}

fn decode(rest: &str) -> Option<Decoded> {
    let words = tokenize(rest);
    let mut d = Decoded::default();
    let mut i = 0;
    let mut negate = false;
    while i < words.len() {
        let w = words[i].as_str();
        let arg = words.get(i + 1).map(String::as_str);
        i += 2;
        match (w, arg, negate) {
            ("!", _, false) => {
                negate = true;
                i -= 1;
                continue;
            }
            ("-i", Some("lo"), true) => d.not_lo = true,
            ("-d", Some(a), false) => {
                let (ip, len) = a.split_once('/').unwrap_or((a, ""));
                let ip: IpAddr = ip.parse().ok()?;
                let full = if ip.is_ipv4() { 32 } else { 128 };
                let len = if len.is_empty() {
                    full
                } else {
                    len.parse().ok()?
                };
                d.daddr = Some((ip, len));
            }
            ("-p", Some("tcp"), false) => d.l4 = Some(L4::Tcp),
            ("-p", Some("udp"), false) => d.l4 = Some(L4::Udp),
            ("-m", Some("tcp" | "udp" | "addrtype" | "comment" | "conntrack"), false) => {}
            ("--dport", Some(p), false) => d.dport = Some(p.parse().ok()?),
            ("--dst-type", Some("LOCAL"), false) => d.local = true,
            ("--ctstate", Some("DNAT"), false) => d.ct_dnat = true,
            ("--comment", Some(c), false) => d.comment = Some(c.to_owned()),
            ("-j", Some(t), false) => d.target = Some(t.to_owned()),
            ("--to-ports", Some(p), false) => d.to_ports = Some(p.parse().ok()?),
            ("--to-destination", Some(a), false) => d.to_dest = Some(a.parse().ok()?),
            _ => return None,
        }
        negate = false;
    }
    Some(d)
}

/// `web [3]` → ("web", 3).
fn split_comment(c: &str) -> Option<(String, usize)> {
    let (label, seq) = c.strip_suffix(']')?.rsplit_once(" [")?;
    Some((label.to_owned(), seq.parse().ok()?))
}

/// Rebuild a [`RuleSet`] from both families' tables; `Foreign` for any rule
/// in lowport's chains that it would not have written.
pub(super) fn decode_states(
    states: &[(Family, FamilyState)],
) -> Result<Option<RuleSet>, FirewallError> {
    if states
        .iter()
        .all(|(_, s)| s.nat.chains.is_empty() && s.raw.chains.is_empty())
    {
        return Ok(None);
    }
    let mut nat: BTreeMap<usize, Vec<(Family, NatRule)>> = BTreeMap::new();
    let mut masq: BTreeMap<usize, MasqRule> = BTreeMap::new();
    let mut guard = false;
    for (family, state) in states {
        for (chain, rest) in state.nat.rules.iter().chain(&state.raw.rules) {
            let foreign = || FirewallError::Foreign(format!("-A {chain} {rest}"));
            let d = decode(rest).ok_or_else(foreign)?;
            // Each rule is read for its values, then written again as
            // lowport would write it: only a rule whose every word decodes
            // the same (prefix length, addrtype, conntrack state, `! -i lo`,
            // target options…) is lowport's; anything else someone added or
            // changed makes it foreign.
            let written_as = |spec: String| decode(&spec).is_some_and(|w| w == d);
            if chain == CHAIN_GUARD {
                if !written_as(guard_rule_spec()) {
                    return Err(foreign());
                }
                guard = true;
                continue;
            }
            let (label, seq) = d
                .comment
                .as_deref()
                .and_then(split_comment)
                .ok_or_else(foreign)?;
            let (l4, dport) = (d.l4.ok_or_else(foreign)?, d.dport.ok_or_else(foreign)?);
            let daddr = d.daddr.map(|(ip, _)| ip);
            if chain == CHAIN_POSTROUTING {
                let m = MasqRule {
                    daddr: daddr.ok_or_else(foreign)?,
                    l4,
                    dport,
                    comment: label,
                };
                if !written_as(masq_rule_spec(&m, seq)) {
                    return Err(foreign());
                }
                masq.insert(seq, m);
                continue;
            }
            let hook = match chain.as_str() {
                CHAIN_PREROUTING => Hook::Prerouting,
                CHAIN_OUTPUT => Hook::Output,
                _ => return Err(foreign()),
            };
            let action = match (d.target.as_deref(), d.to_ports, d.to_dest) {
                (Some("REDIRECT"), Some(port), _) => NatAction::Redirect { port },
                (Some("DNAT"), _, Some(to)) => NatAction::Dnat {
                    addr: to.ip(),
                    port: to.port(),
                },
                _ => return Err(foreign()),
            };
            let rule = NatRule {
                hook,
                family: Some(*family),
                daddr,
                l4,
                dport,
                action,
                comment: label,
            };
            if !written_as(nat_rule_spec(&rule, seq)) {
                return Err(foreign());
            }
            nat.entry(seq).or_default().push((*family, rule));
        }
    }
    let mut rules = RuleSet {
        loopback_guard: guard,
        ..RuleSet::default()
    };
    for (seq, mut copies) in nat {
        let rule = match copies.len() {
            1 => copies.remove(0).1,
            // The same position in both families is one rule for both.
            2 if {
                let (a, b) = (&copies[0].1, &copies[1].1);
                copies[0].0 != copies[1].0
                    && NatRule {
                        family: None,
                        ..a.clone()
                    } == NatRule {
                        family: None,
                        ..b.clone()
                    }
            } =>
            {
                NatRule {
                    family: None,
                    ..copies.remove(0).1
                }
            }
            _ => {
                return Err(FirewallError::Foreign(format!(
                    "two different rules are numbered [{seq}]"
                )))
            }
        };
        rules.nat.push(rule);
    }
    rules.masquerade = masq.into_values().collect();
    Ok(Some(rules))
}

#[cfg(test)]
mod tests {
    use super::super::parse::{parse_save, TableState};
    use super::super::tests::{as_saved, rule, sample};
    use super::super::{Iptables, IptablesFlavor};
    use super::*;

    #[test]
    fn render_then_decode_gives_the_same_ruleset() {
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let rs = sample();
        let states: Vec<(Family, FamilyState)> = [Family::V4, Family::V6]
            .into_iter()
            .map(|f| {
                (
                    f,
                    as_saved(&ipt.render_family(&rs, f, &FamilyState::default())),
                )
            })
            .collect();
        assert_eq!(decode_states(&states).unwrap(), Some(rs));
    }

    #[test]
    fn a_rule_lowport_did_not_write_is_foreign() {
        let st = FamilyState {
            nat: parse_save(
                ":LOWPORT-PREROUTING - [0:0]\n-A LOWPORT-PREROUTING -s 10.0.0.0/8 -j ACCEPT\n",
            ),
            raw: TableState::default(),
        };
        let err = decode_states(&[(Family::V4, st)]).unwrap_err();
        assert!(matches!(err, FirewallError::Foreign(_)), "{err}");
    }

    #[test]
    fn nothing_installed_lists_as_none() {
        let st = FamilyState::default();
        assert_eq!(decode_states(&[(Family::V4, st)]).unwrap(), None);
    }

    /// Decode what `iptables-save` would print for these restore inputs
    /// (IPv4, IPv6) as `rules show` does.
    fn listed(v4: &str, v6: &str) -> Result<Option<RuleSet>, FirewallError> {
        decode_states(&[(Family::V4, as_saved(v4)), (Family::V6, as_saved(v6))])
    }

    /// lowport's own rules, then the same text with `from` replaced by
    /// `to` in `family`'s input: the edited rules must not be taken for
    /// lowport's.
    fn edit_is_foreign(rs: &RuleSet, family: Family, from: &str, to: &str) {
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let mut v4 = ipt.render_family(rs, Family::V4, &FamilyState::default());
        let mut v6 = ipt.render_family(rs, Family::V6, &FamilyState::default());
        assert_eq!(listed(&v4, &v6).unwrap().as_ref(), Some(rs));
        let text = if family == Family::V4 {
            &mut v4
        } else {
            &mut v6
        };
        assert!(text.contains(from), "`{from}` not in\n{text}");
        *text = text.replacen(from, to, 1);
        match listed(&v4, &v6) {
            Err(FirewallError::Foreign(_)) => {}
            other => panic!("`{from}` → `{to}` gave {other:?}, not Foreign"),
        }
    }

    fn dnat(addr: &str, port: u16) -> NatAction {
        NatAction::Dnat {
            addr: addr.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn a_lowport_rule_edited_by_one_attribute_is_foreign() {
        let mut to_host = rule(Hook::Prerouting, Some(Family::V4), dnat("10.0.0.9", 8080));
        to_host.daddr = Some("10.0.0.1".parse().unwrap());
        let mut to_host6 = rule(Hook::Prerouting, Some(Family::V6), dnat("fd00::9", 8080));
        to_host6.daddr = Some("fd00::1".parse().unwrap());
        let rs = RuleSet {
            nat: vec![
                to_host,
                to_host6,
                rule(Hook::Output, None, NatAction::Redirect { port: 8080 }),
            ],
            masquerade: vec![MasqRule {
                daddr: "10.0.0.9".parse().unwrap(),
                l4: L4::Tcp,
                dport: 8080,
                comment: "far".into(),
            }],
            loopback_guard: true,
        };
        let v4 = Family::V4;
        // A destination network instead of the one address.
        edit_is_foreign(&rs, v4, "-d 10.0.0.1/32", "-d 10.0.0.1/24");
        edit_is_foreign(&rs, Family::V6, "-d fd00::1/128", "-d fd00::1/64");
        edit_is_foreign(&rs, v4, "-d 10.0.0.9/32 -p tcp", "-d 10.0.0.9/31 -p tcp");
        // Local clients for every destination, or remote ones for local only.
        edit_is_foreign(&rs, v4, "-m addrtype --dst-type LOCAL ", "");
        edit_is_foreign(
            &rs,
            v4,
            "-A LOWPORT-PREROUTING -d 10.0.0.1/32 ",
            "-A LOWPORT-PREROUTING -d 10.0.0.1/32 -m addrtype --dst-type LOCAL ",
        );
        // Masquerade for all traffic to the target, not only lowport's.
        edit_is_foreign(&rs, v4, "-m conntrack --ctstate DNAT ", "");
        edit_is_foreign(&rs, v4, "-j MASQUERADE", "-j ACCEPT");
        // The guard: another network, also from lo, or accepting.
        edit_is_foreign(&rs, v4, "127.0.0.0/8", "127.0.0.0/16");
        edit_is_foreign(&rs, v4, "! -i lo ", "");
        edit_is_foreign(&rs, v4, "! -i lo ", "-i lo ");
        edit_is_foreign(&rs, v4, "-j DROP", "-j ACCEPT");
        // Other matches or actions lowport never writes.
        edit_is_foreign(
            &rs,
            v4,
            "-p tcp -m tcp --dport 80",
            "-p tcp -m tcp ! --dport 80",
        );
        edit_is_foreign(
            &rs,
            v4,
            "-p tcp -m tcp --dport 80",
            "-p sctp -m sctp --dport 80",
        );
        edit_is_foreign(&rs, v4, "-j REDIRECT --to-ports 8080", "-j REDIRECT");
        edit_is_foreign(
            &rs,
            v4,
            "-j REDIRECT --to-ports 8080",
            "-j DNAT --to-ports 8080",
        );
        edit_is_foreign(
            &rs,
            v4,
            "-j DNAT --to-destination 10.0.0.9:8080",
            "-j REDIRECT --to-destination 10.0.0.9:8080",
        );
        edit_is_foreign(&rs, v4, "\"far [0]\"", "far");
        edit_is_foreign(&rs, v4, "-j MASQUERADE", "-j MASQUERADE --to-ports 9");
    }

    #[test]
    fn the_same_number_in_both_families_is_one_rule_only_when_they_agree() {
        let both = RuleSet {
            nat: vec![rule(
                Hook::Prerouting,
                None,
                NatAction::Redirect { port: 8080 },
            )],
            ..RuleSet::default()
        };
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let v4 = ipt.render_family(&both, Family::V4, &FamilyState::default());
        let v6 = ipt.render_family(&both, Family::V6, &FamilyState::default());
        assert_eq!(listed(&v4, &v6).unwrap(), Some(both));

        // Different ports under the same number: not one rule for both.
        let v6_other = v6.replace("--to-ports 8080", "--to-ports 9090");
        assert!(matches!(
            listed(&v4, &v6_other),
            Err(FirewallError::Foreign(_))
        ));
        // The same rule twice in one family.
        let twice = v4.replace(
            "COMMIT",
            "-A LOWPORT-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment \"web [0]\" -j REDIRECT --to-ports 8080\nCOMMIT",
        );
        assert!(matches!(listed(&twice, ""), Err(FirewallError::Foreign(_))));
        // One family only: that family's rule.
        assert_eq!(
            listed(&v4, "").unwrap().unwrap().nat,
            vec![rule(
                Hook::Prerouting,
                Some(Family::V4),
                NatAction::Redirect { port: 8080 }
            )]
        );
    }

    #[test]
    fn rules_keep_their_comment_and_position() {
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let text = "*nat\n:LOWPORT-PREROUTING - [0:0]\n\
            -A LOWPORT-PREROUTING -p udp -m udp --dport 443 -m comment --comment \"my site [1]\" -j REDIRECT --to-ports 8443\n\
            -A LOWPORT-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment \"web [0]\" -j REDIRECT --to-ports 8080\nCOMMIT\n";
        let rs = listed(text, "").unwrap().unwrap();
        let comments: Vec<(&str, L4, u16)> = rs
            .nat
            .iter()
            .map(|r| (r.comment.as_str(), r.l4, r.dport))
            .collect();
        assert_eq!(comments, [("web", L4::Tcp, 80), ("my site", L4::Udp, 443)]);
        // And the comment is written back the same way.
        let again = ipt.render_family(&rs, Family::V4, &FamilyState::default());
        assert!(again.contains("--comment \"my site [1]\""), "{again}");
        // A rule without its number, or with no comment at all, is not ours.
        for bad in ["\"my site\"", "\"my site [x]\"", "\"my site 1]\""] {
            let t = text.replace("\"my site [1]\"", bad);
            assert!(listed(&t, "").is_err(), "{bad}");
        }
        let t = text.replace("-m comment --comment \"my site [1]\" ", "");
        assert!(listed(&t, "").is_err());
    }

    #[test]
    fn saved_words_honour_quotes_and_escaped_quotes() {
        assert_eq!(
            tokenize(r#"-m comment --comment "say \"hi\" [0]"  -j	X"#),
            vec!["-m", "comment", "--comment", r#"say "hi" [0]"#, "-j", "X"]
        );
        // An empty quoted word is a word; a backslash elsewhere is kept.
        assert_eq!(
            tokenize(r#"--comment "" -j a\b "c\d""#),
            vec!["--comment", "", "-j", r"a\b", r"c\d"]
        );
        assert_eq!(tokenize("  "), Vec::<String>::new());
        // Through the decoder: the comment keeps its quotes, and the words
        // after it are still read as words (not taken into the comment).
        let d = decode(
            r#"-p tcp -m comment --comment "a \"b -j DROP\" [0]" -j REDIRECT --to-ports 8080"#,
        )
        .unwrap();
        assert_eq!(d.comment.as_deref(), Some(r#"a "b -j DROP" [0]"#));
        assert_eq!(
            (d.target.as_deref(), d.to_ports),
            (Some("REDIRECT"), Some(8080))
        );
        // lowport never writes a quote (names cannot hold one): foreign.
        let text = "*nat\n:LOWPORT-PREROUTING - [0:0]\n\
            -A LOWPORT-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment \"say \\\"hi\\\" [0]\" -j REDIRECT --to-ports 8080\nCOMMIT\n";
        assert!(matches!(listed(text, ""), Err(FirewallError::Foreign(_))));
    }
}

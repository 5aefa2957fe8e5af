//! NAT conflicts: another nat rule that also translates a listen port,
//! and whether it runs before lowport's rules.

use serde_json::Value;

use super::nft::{nft_match, s, NftRules, Packet, Tri};
use super::report::{Findings, Status};
use crate::config::Config;
use crate::firewall::{self, iptables, plan};

/// Priority of the nat chains iptables (both flavours) puts lowport's
/// chains in: `NF_IP_PRI_NAT_DST`.
pub(super) const IPTABLES_NAT_PRIORITY: i64 = -100;

pub(super) fn check_nat_conflicts(
    f: &mut Findings,
    config: &Config,
    ruleset: Option<&Value>,
    lowport_prio: i64,
) {
    let mut any = ruleset.is_some_and(|v| nft_nat_conflicts(f, config, v, lowport_prio));
    // Legacy iptables nat runs at -100 in its own kernel tables.
    for family in [plan::Family::V4, plan::Family::V6] {
        if !iptables::legacy_table_loaded(family, "nat") {
            continue;
        }
        let Ok(text) = iptables::save(iptables::IptablesFlavor::Legacy, family, "nat") else {
            continue;
        };
        for m in &config.mappings {
            let port = m.listen.port.to_string();
            for line in text
                .lines()
                .filter(|l| l.starts_with("-A ") && !l.contains("LOWPORT-"))
            {
                let words: Vec<&str> = line.split_whitespace().collect();
                let has = |a: &str, b: &str| words.windows(2).any(|w| w[0] == a && w[1] == b);
                if has("--dport", &port) && (has("-j", "DNAT") || has("-j", "REDIRECT")) {
                    any = true;
                    f.warn(
                        "nat",
                        format!(
                            "{}: a legacy iptables nat rule also translates port {port}: {line}",
                            m.label()
                        ),
                        Some("remove it if lowport is to serve this port".into()),
                    );
                }
            }
        }
    }
    if !any {
        f.ok("nat", "no other NAT table claims the listen ports".into());
    }
}

/// The nftables nat chains of `v` (`nft -j list ruleset`) other than
/// lowport's own: one finding per mapping whose listen port a chain also
/// translates, a problem when it runs first; true if any.
pub(super) fn nft_nat_conflicts(
    f: &mut Findings,
    config: &Config,
    v: &Value,
    lowport_prio: i64,
) -> bool {
    let mut any = false;
    let rs = NftRules::new(v);
    for chain in rs
        .chains
        .iter()
        .filter(|c| s(c, "type") == "nat" && matches!(s(c, "hook"), "prerouting" | "output"))
    {
        let (family, table, name) = (s(chain, "family"), s(chain, "table"), s(chain, "name"));
        if family == "inet" && table == firewall::TABLE {
            continue;
        }
        let prio = chain.get("prio").and_then(Value::as_i64).unwrap_or(0);
        for m in &config.mappings {
            for l4 in m.protocol.l4s() {
                let p = Packet {
                    l4,
                    dport: m.listen.port.get(),
                    orig_dport: m.listen.port.get(),
                };
                let Some(handle) = nft_claims(&rs, (family, table), name, &p, 0) else {
                    continue;
                };
                any = true;
                let what = format!("{}: table {family} {table} chain {name} (priority {prio}) also translates {l4} port {}", m.label(), m.listen.port);
                // iptables puts lowport's jump first in the same `nat`
                // chain; otherwise an equal priority is an undefined order.
                let same_chain = lowport_prio == IPTABLES_NAT_PRIORITY
                    && matches!(family, "ip" | "ip6")
                    && table == "nat";
                if !same_chain && prio <= lowport_prio {
                    f.push(
                        Status::Problem,
                        "nat",
                        format!("{what}, and it runs before lowport's rules (priority {lowport_prio}), so it wins"),
                        Some(format!("remove that rule (sudo nft delete rule {family} {table} {handle}) or map a different port")),
                    );
                } else {
                    f.warn(
                        "nat",
                        format!("{what}; lowport's rules (priority {lowport_prio}) run first, so that mapping never sees these connections"),
                        None,
                    );
                }
            }
        }
    }
    any
}

/// Does this nat chain (or a chain it jumps to) translate the packet's
/// port? Returns `chain NAME handle N` of the rule that does.
pub(super) fn nft_claims(
    rs: &NftRules,
    table: (&str, &str),
    chain: &str,
    p: &Packet,
    depth: u8,
) -> Option<String> {
    if depth > 8 || chain.starts_with("LOWPORT-") {
        return None;
    }
    for (i, rule) in rs.rules(table, chain).into_iter().enumerate() {
        let mut port_named = false;
        let mut no = false;
        for e in rule {
            if let Some(mm) = e.get("match") {
                let is_dport = mm
                    .get("left")
                    .and_then(|l| l.get("payload"))
                    .and_then(|pl| pl.get("field"))
                    .and_then(Value::as_str)
                    == Some("dport");
                match nft_match(mm, p) {
                    Tri::No => no = true,
                    Tri::Yes if is_dport => port_named = true,
                    _ => {}
                }
            }
        }
        if no {
            continue;
        }
        for e in rule {
            let nat = e.get("dnat").is_some()
                || e.get("redirect").is_some()
                || e.get("xt").is_some_and(|x| {
                    matches!(
                        x.get("name").and_then(Value::as_str),
                        Some("DNAT" | "REDIRECT")
                    )
                });
            if nat && port_named {
                let handle = rs
                    .rules
                    .iter()
                    .filter(|r| {
                        s(r, "family") == table.0
                            && s(r, "table") == table.1
                            && s(r, "chain") == chain
                    })
                    .nth(i)
                    .and_then(|r| r.get("handle"))
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                return Some(format!("{chain} handle {handle}"));
            }
            if let Some(target) = e
                .get("jump")
                .or_else(|| e.get("goto"))
                .and_then(|j| j.get("target"))
                .and_then(Value::as_str)
            {
                if let Some(found) = nft_claims(rs, table, target, p, depth + 1) {
                    return Some(found);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::report::Finding;
    use crate::check::testutil::*;
    use serde_json::{json, Value};

    /// The NAT findings for mappings `specs` under ruleset `nft`, with
    /// lowport's chains at `lowport_prio`.
    fn nat_findings(specs: &[&str], nft: &Value, lowport_prio: i64) -> Vec<Finding> {
        let mut f = Findings(Vec::new());
        let any = nft_nat_conflicts(&mut f, &config(specs), nft, lowport_prio);
        assert_eq!(any, !f.0.is_empty(), "the result says whether it found any");
        f.0
    }

    fn dnat(port: u16) -> Value {
        json!({"dnat": {"addr": "10.0.0.1", "port": port}})
    }

    /// A `prerouting` nat chain `(family, table) svc` at `prio` with `rules`,
    /// plus the regular chains `extra`.
    fn nat(
        table: (&str, &str),
        prio: i64,
        rules: Vec<Vec<Value>>,
        extra: Vec<(&str, Vec<Vec<Value>>)>,
    ) -> Value {
        let mut nft = Nft::default().base(table, "svc", ("nat", "prerouting", prio, "accept"));
        for r in rules {
            nft = nft.rule(table, "svc", r);
        }
        for (name, rules) in extra {
            nft = nft.chain(table, name);
            for r in rules {
                nft = nft.rule(table, name, r);
            }
        }
        nft.json()
    }

    const EARLY: (&str, &str) = ("ip", "early");

    /// lowport's nftables priority, and iptables' (its chains sit in the
    /// `nat` tables' own chains).
    const NFT_PRIO: i64 = -105;

    const IPT_PRIO: i64 = -100;

    #[test]
    fn nat_chain_that_runs_first_wins() {
        let rule = || vec![dport("tcp", json!(80)), dnat(8080)];
        let f = nat_findings(
            &["80:8080"],
            &nat(EARLY, -110, vec![rule()], vec![]),
            NFT_PRIO,
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].status, f[0].topic), (Status::Problem, "nat"));
        assert_eq!(
            f[0].message,
            "#1: table ip early chain svc (priority -110) also translates tcp port 80, and it runs before lowport's rules (priority -105), so it wins"
        );
        // The handle is the rule's own (the chain's is 1).
        assert_eq!(
            f[0].fix.as_deref(),
            Some("remove that rule (sudo nft delete rule ip early svc handle 2) or map a different port")
        );
        // An equal priority is an undefined order: a problem too.
        let f = nat_findings(
            &["80:8080"],
            &nat(EARLY, -105, vec![rule()], vec![]),
            NFT_PRIO,
        );
        assert_eq!(f[0].status, Status::Problem, "{f:?}");
        let f = nat_findings(
            &["80:8080"],
            &nat(EARLY, -100, vec![rule()], vec![]),
            NFT_PRIO,
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].status, f[0].fix.as_ref()), (Status::Warning, None));
        assert_eq!(
            f[0].message,
            "#1: table ip early chain svc (priority -100) also translates tcp port 80; lowport's rules (priority -105) run first, so that mapping never sees these connections"
        );
    }

    #[test]
    fn nat_iptables_puts_its_jump_first_in_the_nat_table() {
        let rule = || vec![vec![dport("tcp", json!(80)), dnat(8080)]];
        let status = |table, prio, lowport| {
            let f = nat_findings(&["80:8080"], &nat(table, prio, rule(), vec![]), lowport);
            assert_eq!(f.len(), 1, "{f:?}");
            f[0].status
        };
        // iptables-nft's own `nat` tables hold lowport's jump, first.
        assert_eq!(status(("ip", "nat"), -100, IPT_PRIO), Status::Warning);
        assert_eq!(status(("ip6", "nat"), -100, IPT_PRIO), Status::Warning);
        assert_eq!(status(("ip", "nat"), -110, IPT_PRIO), Status::Warning);
        // Any other table at that priority is an undefined order.
        assert_eq!(status(("inet", "nat"), -100, IPT_PRIO), Status::Problem);
        assert_eq!(status(("ip", "other"), -100, IPT_PRIO), Status::Problem);
        // With nftables, an `ip nat` table is just another table.
        assert_eq!(status(("ip", "nat"), -105, NFT_PRIO), Status::Problem);
        assert_eq!(status(("ip", "nat"), -104, NFT_PRIO), Status::Warning);
    }

    #[test]
    fn nat_chains_and_rules_that_claim_the_port() {
        let claims = |spec: &str, nft: &Value| !nat_findings(&[spec], nft, NFT_PRIO).is_empty();
        let one = |rule: Vec<Value>| nat(EARLY, -110, vec![rule], vec![]);
        assert!(claims(
            "80:8080",
            &one(vec![dport("tcp", json!(80)), dnat(8080)])
        ));
        assert!(claims(
            "80:8080",
            &one(vec![
                dport("tcp", json!({"set": [80, 443]})),
                json!({"redirect": {"port": 8080}})
            ])
        ));
        for target in ["DNAT", "REDIRECT"] {
            let xt = json!({"xt": {"type": "target", "name": target}});
            assert!(
                claims("80:8080", &one(vec![dport("tcp", json!(80)), xt])),
                "{target}"
            );
        }
        let masq = json!({"xt": {"type": "target", "name": "MASQUERADE"}});
        assert!(!claims(
            "80:8080",
            &one(vec![dport("tcp", json!(80)), masq])
        ));
        assert!(!claims(
            "80:8080",
            &one(vec![dport("tcp", json!(80)), verdict("accept")])
        ));
        // Another port, another protocol.
        assert!(!claims(
            "80:8080",
            &one(vec![dport("tcp", json!(443)), dnat(8080)])
        ));
        assert!(!claims(
            "80:8080/udp",
            &one(vec![dport("tcp", json!(80)), dnat(8080)])
        ));
        assert!(claims(
            "80:8080/udp",
            &one(vec![dport("udp", json!(80)), dnat(8080)])
        ));
        // A rule that names no port is not taken to claim this one.
        assert!(!claims(
            "80:8080",
            &one(vec![meta("l4proto", json!("tcp")), dnat(8080)])
        ));
        assert!(!claims(
            "80:8080",
            &one(vec![ct("state", "==", json!("new")), dnat(8080)])
        ));
        assert!(!claims("80:8080", &one(vec![dnat(8080)])));
        // Nor one with a condition that rules the packet out.
        assert!(!claims(
            "80:8080",
            &one(vec![
                meta("iifname", json!("lo")),
                dport("tcp", json!(80)),
                dnat(8080)
            ])
        ));
        assert!(claims(
            "80:8080",
            &one(vec![
                meta("iifname", json!("eth0")),
                dport("tcp", json!(80)),
                dnat(8080)
            ])
        ));
        // Output and prerouting nat chains count; others do not.
        for (kind, hook, counts) in [
            ("nat", "output", true),
            ("nat", "postrouting", false),
            ("nat", "input", false),
            ("filter", "prerouting", false),
        ] {
            let nft = Nft::default()
                .base(EARLY, "c", (kind, hook, -110, "accept"))
                .rule(EARLY, "c", vec![dport("tcp", json!(80)), dnat(8080)])
                .json();
            assert_eq!(claims("80:8080", &nft), counts, "{kind} {hook}");
        }
        // lowport's own table is not a conflict; a table of that name in
        // another family is.
        let rule = || vec![vec![dport("tcp", json!(80)), dnat(8080)]];
        assert!(!claims(
            "80:8080",
            &nat(("inet", "lowport"), -105, rule(), vec![])
        ));
        assert!(claims(
            "80:8080",
            &nat(("ip", "lowport"), -105, rule(), vec![])
        ));
        assert!(claims(
            "80:8080",
            &nat(("inet", "other"), -105, rule(), vec![])
        ));
    }

    #[test]
    fn nat_follows_jumps_and_names_the_rule() {
        // The handle of the rule that translates, in the chain it is in,
        // with rules of other chains and tables listed in between.
        let nft = Nft::default()
            .base(EARLY, "svc", ("nat", "prerouting", -110, "accept"))
            .chain(EARLY, "web")
            .rule(EARLY, "svc", vec![dport("tcp", json!(22)), dnat(2222)])
            .rule(EARLY, "svc", vec![jump("jump", "web")])
            .rule(EARLY, "web", vec![dport("tcp", json!(443)), dnat(8443)])
            .rule(
                ("ip6", "early"),
                "web",
                vec![dport("tcp", json!(80)), dnat(8080)],
            )
            .rule(
                ("ip", "late"),
                "web",
                vec![dport("tcp", json!(80)), dnat(8080)],
            )
            .rule(EARLY, "other", vec![dport("tcp", json!(80)), dnat(8080)])
            .rule(EARLY, "web", vec![dport("tcp", json!(80)), dnat(8080)])
            .json();
        let f = nat_findings(&["80:8080"], &nft, NFT_PRIO);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            f[0].fix.as_deref(),
            Some("remove that rule (sudo nft delete rule ip early web handle 9) or map a different port")
        );
        assert!(
            f[0].message.contains("chain svc (priority -110)"),
            "{}",
            f[0].message
        );
        // goto too; a jump that cannot apply is not followed.
        let via = |kind: &str, cond: Vec<Value>| {
            nat(
                EARLY,
                -110,
                vec![[cond, vec![jump(kind, "web")]].concat()],
                vec![("web", vec![vec![dport("tcp", json!(80)), dnat(8080)]])],
            )
        };
        assert_eq!(
            nat_findings(&["80:8080"], &via("goto", vec![]), NFT_PRIO).len(),
            1
        );
        assert!(nat_findings(
            &["80:8080"],
            &via("jump", vec![dport("tcp", json!(22))]),
            NFT_PRIO
        )
        .is_empty());
        // lowport's own chains (iptables) are not a conflict.
        let ours = nat(
            ("ip", "nat"),
            -100,
            vec![vec![jump("jump", "LOWPORT-PRE")]],
            vec![(
                "LOWPORT-PRE",
                vec![vec![dport("tcp", json!(80)), dnat(8080)]],
            )],
        );
        assert!(nat_findings(&["80:8080"], &ours, IPT_PRIO).is_empty());
        // Eight deep is followed; a loop ends.
        let mut extra: Vec<(&str, Vec<Vec<Value>>)> = Vec::new();
        let names = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"];
        for (i, n) in names.iter().enumerate() {
            let rules = match names.get(i + 1) {
                Some(next) => vec![vec![jump("jump", next)]],
                None => vec![vec![dport("tcp", json!(80)), dnat(8080)]],
            };
            extra.push((n, rules));
        }
        let deep = nat(EARLY, -110, vec![vec![jump("jump", "c1")]], extra);
        assert_eq!(nat_findings(&["80:8080"], &deep, NFT_PRIO).len(), 1);
        let looped = nat(
            EARLY,
            -110,
            vec![vec![jump("jump", "a")]],
            vec![("a", vec![vec![jump("jump", "a")]])],
        );
        assert!(nat_findings(&["80:8080"], &looped, NFT_PRIO).is_empty());
        // Every mapping and protocol is asked about.
        let both = nat(
            EARLY,
            -110,
            vec![vec![dport("th", json!(80)), dnat(8080)]],
            vec![],
        );
        let f = nat_findings(&["443:8443", "80:8080/both"], &both, NFT_PRIO);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].message.starts_with("#2: ") && f[0].message.contains("translates tcp port 80")
        );
        assert!(
            f[1].message.contains("translates udp port 80"),
            "{}",
            f[1].message
        );
    }
}

//! Input filters: does a firewall drop the redirected connections? It
//! sees the translated port, not the one the client sent to.

use serde_json::Value;

use super::nft::{nft_chain_verdict, s, NftRules, Packet};
use super::report::Findings;
use crate::config::Config;
use crate::firewall::{self, iptables, plan};
use crate::mapping::{Mapping, TargetHost, L4};

/// The port the input firewall sees for a mapping, when the target is this host.
pub(super) fn translated_port(m: &Mapping) -> Option<u16> {
    match &m.target.host {
        TargetHost::Local => Some(m.target.port.get()),
        TargetHost::Ip(ip)
            if ip.is_loopback()
                || firewall::plan::HostView::is_local(&firewall::SystemHost, *ip) =>
        {
            Some(m.target.port.get())
        }
        _ => None,
    }
}

pub(super) fn check_input_filters(
    f: &mut Findings,
    config: &Config,
    ruleset: Option<&Value>,
    needed: bool,
) {
    let mut blocked_any = ruleset.is_some_and(|v| nft_input_blocks(f, config, v, needed));
    blocked_any |= check_legacy_input(f, config, needed);
    if !blocked_any {
        f.ok(
            "input",
            "no input firewall drops the translated ports".into(),
        );
    }
    if ruleset.is_none() {
        f.warn(
            "input",
            "cannot read the nftables ruleset (`nft -j list ruleset`); not checked".into(),
            Some("install nftables, run as root".into()),
        );
    }
}

/// The nftables input filter chains of `v` (`nft -j list ruleset`): one
/// finding per mapping whose translated port a chain drops; true if any.
pub(super) fn nft_input_blocks(f: &mut Findings, config: &Config, v: &Value, needed: bool) -> bool {
    let mut blocked_any = false;
    let rs = NftRules::new(v);
    for chain in rs
        .chains
        .iter()
        .filter(|c| s(c, "hook") == "input" && s(c, "type") == "filter")
    {
        let (family, table, name) = (s(chain, "family"), s(chain, "table"), s(chain, "name"));
        let policy_drop = s(chain, "policy") == "drop";
        for m in &config.mappings {
            let Some(dport) = translated_port(m) else {
                continue;
            };
            for l4 in m.protocol.l4s() {
                for family_v4 in [true, false] {
                    let sees = match family {
                        "ip" => family_v4,
                        "ip6" => !family_v4,
                        "inet" => true,
                        _ => false,
                    };
                    if !sees {
                        continue;
                    }
                    let p = Packet {
                        l4,
                        dport,
                        orig_dport: m.listen.port.get(),
                    };
                    let verdict = nft_chain_verdict(&rs, (family, table), name, &p, 0);
                    let blocked = verdict == Some(false) || (verdict.is_none() && policy_drop);
                    if blocked {
                        blocked_any = true;
                        let listen = m.listen.port.get();
                        f.need(
                            needed,
                            "input",
                            format!(
                                "{}: chain {family} {table} {name} (hook input{}) drops {l4} to port {dport}: the input firewall sees the translated port {dport}, not {listen}",
                                m.label(),
                                if policy_drop { ", policy drop" } else { "" },
                            ),
                            format!("sudo nft insert rule {family} {table} {name} meta l4proto {l4} ct original proto-dst {listen} accept"),
                        );
                        break;
                    }
                }
            }
        }
    }
    blocked_any
}

/// Legacy iptables INPUT with a DROP policy: is the translated port accepted?
pub(super) fn check_legacy_input(f: &mut Findings, config: &Config, needed: bool) -> bool {
    let mut blocked_any = false;
    for family in [plan::Family::V4, plan::Family::V6] {
        if !iptables::legacy_table_loaded(family, "filter") {
            continue;
        }
        let Ok(text) = iptables::save(iptables::IptablesFlavor::Legacy, family, "filter") else {
            continue;
        };
        if !text.lines().any(|l| l.starts_with(":INPUT DROP")) {
            continue;
        }
        for m in &config.mappings {
            let Some(dport) = translated_port(m) else {
                continue;
            };
            for l4 in m.protocol.l4s() {
                let accepted = legacy_input_accepts(&text, l4, dport, m.listen.port.get());
                if !accepted {
                    blocked_any = true;
                    let tool = if family == plan::Family::V4 {
                        "iptables-legacy"
                    } else {
                        "ip6tables-legacy"
                    };
                    f.need(
                        needed,
                        "input",
                        format!("{}: legacy {tool} INPUT has policy DROP and no rule accepts {l4} port {dport} (the firewall sees the translated port, not {})", m.label(), m.listen.port),
                        format!("sudo {tool} -I INPUT -p {l4} -m conntrack --ctstate DNAT --ctorigdstport {} -j ACCEPT", m.listen.port),
                    );
                }
            }
        }
    }
    blocked_any
}

/// Does a rule of INPUT in `text` (`iptables-save` of the filter table)
/// accept `l4` connections to the translated port `dport` that a client
/// sent to `listen`? A rule that names no port, state or interface accepts
/// everything.
pub(super) fn legacy_input_accepts(text: &str, l4: L4, dport: u16, listen: u16) -> bool {
    text.lines()
        .filter_map(|l| l.strip_prefix("-A INPUT "))
        .any(|r| {
            let words: Vec<&str> = r.split_whitespace().collect();
            let has = |a: &str, b: &str| words.windows(2).any(|w| w[0] == a && w[1] == b);
            let proto_ok = !words.contains(&"-p") || has("-p", &l4.to_string());
            let port_ok = has("--dport", &dport.to_string())
                || has("--ctorigdstport", &listen.to_string())
                || !words.iter().any(|w| {
                    w.starts_with("--dport")
                        || w.starts_with("--ctorigdstport")
                        || *w == "--ctstate"
                        || *w == "--state"
                        || *w == "-i"
                });
            proto_ok && port_ok && has("-j", "ACCEPT")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::report::{Finding, Status};
    use crate::check::testutil::*;
    use serde_json::{json, Value};

    /// An `inet filter input` chain with `policy` and `rules`, plus the
    /// regular chains `extra` (name, rules) it may jump to.
    fn input(policy: &str, rules: Vec<Vec<Value>>, extra: Vec<(&str, Vec<Vec<Value>>)>) -> Value {
        let mut nft = Nft::default().base(FILTER, "input", ("filter", "input", 0, policy));
        for r in rules {
            nft = nft.rule(FILTER, "input", r);
        }
        for (name, rules) in extra {
            nft = nft.chain(FILTER, name);
            for r in rules {
                nft = nft.rule(FILTER, name, r);
            }
        }
        nft.json()
    }

    /// The input findings for mappings `specs` under ruleset `nft` (the mode
    /// in use needs the rules when `needed`).
    fn input_findings(specs: &[&str], nft: &Value, needed: bool) -> Vec<Finding> {
        let mut f = Findings(Vec::new());
        let any = nft_input_blocks(&mut f, &config(specs), nft, needed);
        assert_eq!(any, !f.0.is_empty(), "the result says whether it found any");
        f.0
    }

    /// Does the input firewall `nft` drop the connections of mapping `spec`?
    fn blocked(spec: &str, nft: &Value) -> bool {
        !input_findings(&[spec], nft, true).is_empty()
    }

    #[test]
    fn input_policy_decides_when_no_rule_does() {
        let drop = input("drop", vec![], vec![]);
        let f = input_findings(&["80:8080"], &drop, true);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].status, Status::Problem);
        assert_eq!(f[0].topic, "input");
        assert!(
            f[0].message.starts_with(
                "#1: chain inet filter input (hook input, policy drop) drops tcp to port 8080"
            ),
            "{}",
            f[0].message
        );
        assert_eq!(
            f[0].fix.as_deref(),
            Some("sudo nft insert rule inet filter input meta l4proto tcp ct original proto-dst 80 accept")
        );
        // The other mode in use: only worth knowing.
        assert_eq!(
            input_findings(&["80:8080"], &drop, false)[0].status,
            Status::Warning
        );
        assert!(!blocked("80:8080", &input("accept", vec![], vec![])));
    }

    #[test]
    fn input_sees_the_translated_port() {
        let accepts = |e: Value| input("drop", vec![vec![e, verdict("accept")]], vec![]);
        assert!(!blocked("80:8080", &accepts(dport("tcp", json!(8080)))));
        // The trap: a rule for the listen port does not let the redirected
        // connections in, the filter sees 8080.
        assert!(blocked("80:8080", &accepts(dport("tcp", json!(80)))));
        assert!(blocked("80:8080", &accepts(dport("tcp", json!(22)))));
        // The port the client sent to, remembered by conntrack.
        assert!(!blocked("80:8080", &accepts(ct_orig_dport(80))));
        assert!(blocked("80:8080", &accepts(ct_orig_dport(8080))));
        // Sets, ranges, a list.
        assert!(!blocked(
            "80:8080",
            &accepts(dport("tcp", json!({"set": [22, 8080]})))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(dport("tcp", json!({"set": [8080, 22]})))
        ));
        assert!(blocked(
            "80:8080",
            &accepts(dport("tcp", json!({"set": [22, 443]})))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(dport("tcp", json!({"range": [8000, 8100]})))
        ));
        assert!(blocked(
            "80:8080",
            &accepts(dport("tcp", json!({"range": [8081, 8100]})))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(dport("tcp", json!([22, 8080])))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(dport("tcp", json!([8080, 22])))
        ));
        assert!(blocked("80:8080", &accepts(dport("tcp", json!([22, 443])))));
        // `!=`.
        assert!(blocked(
            "80:8080",
            &accepts(payload("tcp", "dport", "!=", json!(8080)))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(payload("tcp", "dport", "!=", json!(22)))
        ));
    }

    #[test]
    fn input_matches_the_protocol() {
        let accepts =
            |e: Vec<Value>| input("drop", vec![[e, vec![verdict("accept")]].concat()], vec![]);
        assert!(blocked(
            "80:8080/udp",
            &accepts(vec![dport("tcp", json!(8080))])
        ));
        assert!(!blocked(
            "80:8080/udp",
            &accepts(vec![dport("udp", json!(8080))])
        ));
        assert!(blocked(
            "80:8080",
            &accepts(vec![dport("udp", json!(8080))])
        ));
        // `tcp dport != 22` never matches UDP either.
        assert!(blocked(
            "80:8080/udp",
            &accepts(vec![payload("tcp", "dport", "!=", json!(22))])
        ));
        let th = vec![meta("l4proto", json!("udp")), dport("th", json!(8080))];
        assert!(!blocked("80:8080/udp", &accepts(th.clone())));
        assert!(blocked("80:8080", &accepts(th)));
        assert!(!blocked(
            "80:8080",
            &accepts(vec![meta("l4proto", json!({"set": ["tcp", "udp"]}))])
        ));
        assert!(blocked(
            "80:8080",
            &accepts(vec![meta("l4proto", json!(["udp", "icmp"]))])
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(vec![meta("l4proto", json!(["icmp", "tcp"]))])
        ));
        // Both protocols: each is checked, one finding each.
        let tcp_only = accepts(vec![dport("tcp", json!(8080))]);
        let f = input_findings(&["80:8080/both"], &tcp_only, true);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].message.contains("drops udp to port 8080"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn input_new_connections_and_interfaces() {
        let accepts = |e: Value| input("drop", vec![vec![e, verdict("accept")]], vec![]);
        // Established/related lets replies in, not the first packet.
        assert!(blocked(
            "80:8080",
            &accepts(ct("state", "in", json!(["established", "related"])))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(ct("state", "in", json!(["new", "established"])))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(ct("state", "==", json!("new")))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(ct("state", "==", json!({"set": ["new"]})))
        ));
        assert!(blocked(
            "80:8080",
            &accepts(ct(
                "state",
                "==",
                json!({"set": ["established", "related"]})
            ))
        ));
        assert!(blocked(
            "80:8080",
            &accepts(ct("state", "==", json!("invalid")))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(ct("status", "==", json!("dnat")))
        ));
        assert!(blocked(
            "80:8080",
            &accepts(ct("status", "==", json!("snat")))
        ));
        // The client is not on lo; it may be on any other interface.
        assert!(blocked("80:8080", &accepts(meta("iifname", json!("lo")))));
        assert!(blocked("80:8080", &accepts(meta("iif", json!("lo")))));
        assert!(!blocked(
            "80:8080",
            &accepts(meta("iifname", json!("eth0")))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(meta("iifname", json!({"set": ["eth0", "wg0"]})))
        ));
        // What the check cannot know gets the benefit of the doubt: it may
        // accept, but it never drops.
        let saddr = payload(
            "ip",
            "saddr",
            "==",
            json!({"prefix": {"addr": "10.0.0.0", "len": 8}}),
        );
        assert!(!blocked("80:8080", &accepts(saddr.clone())));
        assert!(!blocked(
            "80:8080",
            &accepts(payload("tcp", "sport", "==", json!(1234)))
        ));
        let drops =
            |e: Vec<Value>, v: &str| input("accept", vec![[e, vec![verdict(v)]].concat()], vec![]);
        assert!(!blocked("80:8080", &drops(vec![saddr.clone()], "drop")));
        assert!(!blocked(
            "80:8080",
            &drops(vec![meta("iifname", json!("eth0"))], "drop")
        ));
        assert!(!blocked(
            "80:8080",
            &drops(vec![dport("tcp", json!(8080)), saddr], "drop")
        ));
        let xt_match = json!({"xt": {"type": "match", "name": "conntrack"}});
        assert!(!blocked("80:8080", &accepts(xt_match.clone())));
        assert!(!blocked("80:8080", &drops(vec![xt_match], "drop")));
        // An xt target is no condition: the rule still drops.
        let xt_target = json!({"xt": {"type": "target", "name": "LOG"}});
        assert!(blocked(
            "80:8080",
            &drops(vec![dport("tcp", json!(8080)), xt_target], "drop")
        ));
        // A match without both sides cannot be read.
        assert!(!blocked(
            "80:8080",
            &drops(
                vec![json!({"match": {"op": "==", "left": {"meta": {"key": "mark"}}}})],
                "drop"
            )
        ));
    }

    #[test]
    fn input_rules_apply_in_order() {
        let port = || dport("tcp", json!(8080));
        // An explicit drop or reject under an accept policy.
        for v in ["drop", "reject"] {
            let nft = input("accept", vec![vec![port(), verdict(v)]], vec![]);
            let f = input_findings(&["80:8080"], &nft, true);
            assert_eq!(f.len(), 1, "{v}: {f:?}");
            assert!(
                f[0].message.contains("(hook input) drops tcp to port 8080"),
                "no policy drop named: {}",
                f[0].message
            );
        }
        assert!(!blocked(
            "80:8080",
            &input(
                "accept",
                vec![vec![dport("tcp", json!(22)), verdict("drop")]],
                vec![]
            )
        ));
        // The first rule that decides wins.
        let drop_first = input(
            "accept",
            vec![
                vec![port(), verdict("drop")],
                vec![port(), verdict("accept")],
            ],
            vec![],
        );
        assert!(blocked("80:8080", &drop_first));
        let accept_first = input(
            "drop",
            vec![
                vec![port(), verdict("accept")],
                vec![port(), verdict("drop")],
            ],
            vec![],
        );
        assert!(!blocked("80:8080", &accept_first));
        // A rule that matches but has no verdict (a counter) falls through.
        let counter = input(
            "drop",
            vec![vec![port(), json!({"counter": {"packets": 0, "bytes": 0}})]],
            vec![],
        );
        assert!(blocked("80:8080", &counter));
    }

    #[test]
    fn input_follows_jumps() {
        let port = || dport("tcp", json!(8080));
        for kind in ["jump", "goto"] {
            let allow = input(
                "drop",
                vec![vec![jump(kind, "allow")]],
                vec![("allow", vec![vec![port(), verdict("accept")]])],
            );
            assert!(!blocked("80:8080", &allow), "{kind}");
            let deny = input(
                "accept",
                vec![vec![port(), jump(kind, "deny")]],
                vec![("deny", vec![vec![verdict("drop")]])],
            );
            assert!(blocked("80:8080", &deny), "{kind}");
        }
        // A chain that decides nothing returns to the policy.
        let nothing = |policy| {
            input(
                policy,
                vec![vec![jump("jump", "other")]],
                vec![(
                    "other",
                    vec![vec![dport("tcp", json!(22)), verdict("accept")]],
                )],
            )
        };
        assert!(blocked("80:8080", &nothing("drop")));
        assert!(!blocked("80:8080", &nothing("accept")));
        // ... and to the rules after the jump.
        let after = input(
            "drop",
            vec![vec![jump("jump", "other")], vec![port(), verdict("accept")]],
            vec![("other", vec![])],
        );
        assert!(!blocked("80:8080", &after));
        // A jump that only maybe applies may accept, but never drops.
        let maybe = |v: &str, policy| {
            input(
                policy,
                vec![vec![meta("iifname", json!("eth0")), jump("jump", "c")]],
                vec![("c", vec![vec![verdict(v)]])],
            )
        };
        assert!(!blocked("80:8080", &maybe("drop", "accept")));
        assert!(!blocked("80:8080", &maybe("accept", "drop")));
        // A jump that does not apply is not followed.
        let not_for_us = input(
            "accept",
            vec![vec![dport("tcp", json!(22)), jump("jump", "deny")]],
            vec![("deny", vec![vec![verdict("drop")]])],
        );
        assert!(!blocked("80:8080", &not_for_us));
        // Nested jumps are followed eight deep.
        let mut extra: Vec<(&str, Vec<Vec<Value>>)> = Vec::new();
        let names = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"];
        for (i, n) in names.iter().enumerate() {
            let rules = match names.get(i + 1) {
                Some(next) => vec![vec![jump("jump", next)]],
                None => vec![vec![port(), verdict("accept")]],
            };
            extra.push((n, rules));
        }
        assert!(!blocked(
            "80:8080",
            &input("drop", vec![vec![jump("jump", "c1")]], extra)
        ));
        // A loop ends (the kernel refuses one; a ruleset read half-way may show one).
        let looped = input(
            "drop",
            vec![vec![jump("jump", "a")]],
            vec![("a", vec![vec![jump("jump", "a")]])],
        );
        assert!(blocked("80:8080", &looped));
    }

    #[test]
    fn input_chains_that_see_the_packet() {
        let chain = |family: &str, hook: &str, kind: &str| {
            Nft::default()
                .base((family, "t"), "c", (kind, hook, 0, "drop"))
                .json()
        };
        for family in ["ip", "ip6", "inet"] {
            let f = input_findings(&["80:8080"], &chain(family, "input", "filter"), true);
            assert_eq!(
                f.len(),
                1,
                "{family}: one finding, not one per family: {f:?}"
            );
            assert!(
                f[0].message.contains(&format!("chain {family} t c ")),
                "{}",
                f[0].message
            );
        }
        assert!(!blocked("80:8080", &chain("arp", "input", "filter")));
        assert!(!blocked("80:8080", &chain("bridge", "input", "filter")));
        assert!(!blocked("80:8080", &chain("inet", "forward", "filter")));
        assert!(!blocked("80:8080", &chain("inet", "input", "nat")));
        // Rules belong to their own family, table and chain.
        let port = dport("tcp", json!(8080));
        for other in [("ip", "t", "c"), ("inet", "u", "c"), ("inet", "t", "d")] {
            let nft = Nft::default()
                .base(("inet", "t"), "c", ("filter", "input", 0, "drop"))
                .rule(
                    (other.0, other.1),
                    other.2,
                    vec![port.clone(), verdict("accept")],
                )
                .json();
            assert!(blocked("80:8080", &nft), "{other:?}");
        }
        // Two chains: both must let it through.
        let two = Nft::default()
            .base(FILTER, "input", ("filter", "input", 0, "accept"))
            .base(("ip", "other"), "in", ("filter", "input", 10, "drop"))
            .json();
        let f = input_findings(&["80:8080", "443:8443"], &two, true);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[1].message.starts_with("#2: chain ip other in "),
            "{}",
            f[1].message
        );
    }

    #[test]
    fn input_checks_only_targets_on_this_host() {
        let drop = input("drop", vec![], vec![]);
        assert!(blocked("80:127.0.0.1:8080", &drop));
        assert!(blocked("80:[::1]:8080", &drop));
        // Forwarded to another host: the input chain never sees it.
        assert!(!blocked("80:192.0.2.1:8080", &drop));
        assert!(!blocked("80:192.0.2.1:8080/udp", &drop));
        assert_eq!(
            translated_port(&config(&["80:8080"]).mappings[0]),
            Some(8080)
        );
        assert_eq!(
            translated_port(&config(&["80:127.0.0.1:8081"]).mappings[0]),
            Some(8081)
        );
        assert_eq!(
            translated_port(&config(&["80:192.0.2.1:8080"]).mappings[0]),
            None
        );
        assert_eq!(
            translated_port(&config(&["80:example.invalid:8080"]).mappings[0]),
            None
        );
        // Nothing to read: nothing found.
        assert!(input_findings(&["80:8080"], &json!({}), true).is_empty());
    }

    #[test]
    fn legacy_input_rules_that_accept_the_translated_port() {
        let accepts = |rules: &[&str], l4| {
            let text = format!(
                "*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n{}\nCOMMIT\n",
                rules.join("\n")
            );
            legacy_input_accepts(&text, l4, 8080, 80)
        };
        let tcp = |rules: &[&str]| accepts(rules, L4::Tcp);
        assert!(tcp(&["-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT"]));
        assert!(!accepts(
            &["-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT"],
            L4::Udp
        ));
        assert!(accepts(
            &["-A INPUT -p udp -m udp --dport 8080 -j ACCEPT"],
            L4::Udp
        ));
        // The trap: the listen port is not what INPUT sees.
        assert!(!tcp(&["-A INPUT -p tcp -m tcp --dport 80 -j ACCEPT"]));
        assert!(!tcp(&["-A INPUT -p tcp -m tcp --dport 8081 -j ACCEPT"]));
        assert!(!tcp(&["-A INPUT -p tcp -m tcp --dport 8080 -j DROP"]));
        assert!(!tcp(&["-A FORWARD -p tcp -m tcp --dport 8080 -j ACCEPT"]));
        assert!(!tcp(&[
            "-A INPUT -p tcp -m multiport --dports 22,443 -j ACCEPT"
        ]));
        // What check suggests: the port the client sent to, from conntrack.
        assert!(tcp(&[
            "-A INPUT -p tcp -m conntrack --ctstate DNAT --ctorigdstport 80 -j ACCEPT"
        ]));
        assert!(tcp(&[
            "-A INPUT -m conntrack --ctstate DNAT --ctorigdstport 80 -j ACCEPT"
        ]));
        assert!(!tcp(&[
            "-A INPUT -m conntrack --ctstate DNAT --ctorigdstport 443 -j ACCEPT"
        ]));
        assert!(!tcp(&[
            "-A INPUT -m conntrack --ctorigdstport 443 -j ACCEPT"
        ]));
        // Everything, or everything of the protocol.
        assert!(tcp(&["-A INPUT -j ACCEPT"]));
        assert!(tcp(&["-A INPUT -p tcp -j ACCEPT"]));
        assert!(!tcp(&["-A INPUT -p udp -j ACCEPT"]));
        // Replies, loopback: not a new connection from a client.
        assert!(!tcp(&[
            "-A INPUT -m state --state RELATED,ESTABLISHED -j ACCEPT"
        ]));
        assert!(!tcp(&[
            "-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ]));
        assert!(!tcp(&["-A INPUT -i lo -j ACCEPT"]));
        // Any rule of the chain will do.
        assert!(tcp(&[
            "-A INPUT -i lo -j ACCEPT",
            "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT"
        ]));
        assert!(tcp(&[
            "-A INPUT -p tcp -m tcp --dport 8080 -j ACCEPT",
            "-A INPUT -i lo -j ACCEPT"
        ]));
        assert!(!tcp(&[]));
    }
}

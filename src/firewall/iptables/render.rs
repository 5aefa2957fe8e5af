//! Writing `iptables-restore --noflush` input: the rules of a [`RuleSet`]
//! in lowport's chains, the jumps that reach them, the removal of chains no
//! longer needed, and the input that puts a family's tables back as they
//! were when a later restore is rejected.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::parse::{FamilyState, TableState};
use super::{
    Iptables, CHAIN_GUARD, CHAIN_OUTPUT, CHAIN_POSTROUTING, CHAIN_PREROUTING, GUARD_COMMENT,
    JUMP_COMMENT,
};
use crate::firewall::plan::{Family, Hook, MasqRule, NatAction, NatRule, RuleSet};

impl Iptables {
    /// The restore input for one family, given what is there now.
    pub(super) fn render_family(
        &self,
        rules: &RuleSet,
        family: Family,
        now: &FamilyState,
    ) -> String {
        let mut out = format!(
            "# {}: {} -w --noflush\n",
            family,
            self.flavor.tool(family, "restore")
        );
        // raw: the guard, IPv4 only.
        if family == Family::V4 && (rules.loopback_guard || !now.raw.is_empty()) {
            let mut t = TableText::new("raw", &now.raw);
            if rules.loopback_guard {
                t.declare(CHAIN_GUARD);
                t.rule(CHAIN_GUARD, &guard_rule_spec());
            }
            t.finish(&mut out);
        }
        // nat: both DNAT chains always (so an empty rule set still reads
        // back as installed), masquerade when a remote target needs it.
        let mut t = TableText::new("nat", &now.nat);
        t.declare(CHAIN_PREROUTING);
        t.declare(CHAIN_OUTPUT);
        let masq: Vec<(usize, &MasqRule)> = rules
            .masquerade
            .iter()
            .enumerate()
            .filter(|(_, m)| Family::of(m.daddr) == family)
            .collect();
        if !masq.is_empty() {
            t.declare(CHAIN_POSTROUTING);
        }
        for (seq, r) in rules.nat.iter().enumerate() {
            if r.family.is_some_and(|f| f != family) {
                continue;
            }
            let chain = match r.hook {
                Hook::Prerouting => CHAIN_PREROUTING,
                Hook::Output => CHAIN_OUTPUT,
            };
            t.rule(chain, &nat_rule_spec(r, seq));
        }
        for (seq, m) in masq {
            t.rule(CHAIN_POSTROUTING, &masq_rule_spec(m, seq));
        }
        t.finish(&mut out);
        out
    }

    pub(super) fn render_all(
        &self,
        rules: &RuleSet,
        states: &[(Family, FamilyState)],
    ) -> Vec<(Family, String)> {
        states
            .iter()
            .map(|(family, now)| (*family, self.render_family(rules, *family, now)))
            .collect()
    }
}

/// One `*table … COMMIT` block being written: declarations, rules, then
/// the jumps (old ones deleted, new ones inserted at position 1), then the
/// removal of lowport's chains that are no longer needed.
struct TableText<'a> {
    table: &'static str,
    now: &'a TableState,
    declared: Vec<&'static str>,
    rules: Vec<String>,
}

impl<'a> TableText<'a> {
    fn new(table: &'static str, now: &'a TableState) -> Self {
        TableText {
            table,
            now,
            declared: Vec::new(),
            rules: Vec::new(),
        }
    }

    fn declare(&mut self, chain: &'static str) {
        self.declared.push(chain);
    }

    fn rule(&mut self, chain: &str, spec: &str) {
        self.rules.push(format!("-A {chain} {spec}"));
    }

    fn finish(self, out: &mut String) {
        let _ = writeln!(out, "*{}", self.table);
        for chain in &self.declared {
            // Creates the chain, or (with --noflush) empties it.
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for r in &self.rules {
            let _ = writeln!(out, "{r}");
        }
        for jump in &self.now.jumps {
            let _ = writeln!(out, "-D {jump}");
        }
        for chain in &self.declared {
            let _ = writeln!(
                out,
                "-I {} 1 -m comment --comment {JUMP_COMMENT} -j {chain}",
                builtin_chain_for(chain)
            );
        }
        for chain in &self.now.chains {
            if !self.declared.contains(&chain.as_str()) {
                let _ = writeln!(out, "-F {chain}");
                let _ = writeln!(out, "-X {chain}");
            }
        }
        let _ = writeln!(out, "COMMIT");
    }
}

/// Restore input that turns the tables from `now` back into `before`: the
/// chains lowport had, with their rules as `iptables-save` printed them, and
/// their jumps at the head of the built-in chains, where lowport puts them.
pub(super) fn render_rollback(before: &FamilyState, now: &FamilyState) -> String {
    let mut out = String::new();
    for (table, before, now) in [
        ("raw", &before.raw, &now.raw),
        ("nat", &before.nat, &now.nat),
    ] {
        if before == now {
            continue;
        }
        let _ = writeln!(out, "*{table}");
        for chain in &before.chains {
            // Creates the chain, or (with --noflush) empties it.
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for jump in &now.jumps {
            let _ = writeln!(out, "-D {jump}");
        }
        for chain in &now.chains {
            if !before.chains.contains(chain) {
                let _ = writeln!(out, "-F {chain}\n-X {chain}");
            }
        }
        for (chain, rest) in &before.rules {
            let _ = writeln!(out, "-A {chain} {rest}");
        }
        for jump in before.jumps.iter().rev() {
            let (chain, rest) = jump.split_once(' ').unwrap_or((jump, ""));
            let _ = writeln!(out, "-I {chain} 1 {rest}");
        }
        let _ = writeln!(out, "COMMIT");
    }
    out
}

/// The built-in chain that jumps to one of lowport's.
fn builtin_chain_for(chain: &str) -> &'static str {
    match chain {
        CHAIN_OUTPUT => "OUTPUT",
        CHAIN_POSTROUTING => "POSTROUTING",
        _ => "PREROUTING",
    }
}

/// The comment of rule number `seq` of mapping `label`.
fn rule_comment(label: &str, seq: usize) -> String {
    format!("{label} [{seq}]")
}

/// `-d 10.0.0.1/32 -p tcp -m tcp --dport 80 [-m addrtype --dst-type LOCAL]
/// -m comment --comment "web [0]" -j REDIRECT --to-ports 8080`
pub(super) fn nat_rule_spec(r: &NatRule, seq: usize) -> String {
    let mut s = String::new();
    if let Some(d) = r.daddr {
        let _ = write!(s, "-d {} ", host_prefix(d));
    }
    let _ = write!(s, "-p {l4} -m {l4} --dport {} ", r.dport, l4 = r.l4);
    if r.hook == Hook::Output {
        // Local clients only when the destination is this host: without
        // this, the host's own connections to port 80 elsewhere would be
        // redirected to its backend.
        s.push_str("-m addrtype --dst-type LOCAL ");
    }
    let _ = write!(
        s,
        "-m comment --comment \"{}\" ",
        rule_comment(&r.comment, seq)
    );
    match r.action {
        NatAction::Redirect { port } => {
            let _ = write!(s, "-j REDIRECT --to-ports {port}");
        }
        NatAction::Dnat { addr, port } => {
            let _ = write!(
                s,
                "-j DNAT --to-destination {}",
                std::net::SocketAddr::new(addr, port)
            );
        }
    }
    s
}

/// Drop what comes for 127.0.0.0/8 from anywhere but `lo`: with
/// route_localnet on, the DNAT to a loopback backend would otherwise let
/// other hosts reach every loopback service.
pub(super) fn guard_rule_spec() -> String {
    format!("! -i lo -d 127.0.0.0/8 -m comment --comment \"{GUARD_COMMENT}\" -j DROP")
}

/// Masquerade only what lowport translated (`--ctstate DNAT`), so other
/// traffic to the same target keeps its source address.
pub(super) fn masq_rule_spec(m: &MasqRule, seq: usize) -> String {
    format!(
        "-d {} -p {l4} -m {l4} --dport {} -m conntrack --ctstate DNAT -m comment --comment \"{}\" -j MASQUERADE",
        host_prefix(m.daddr),
        m.dport,
        rule_comment(&m.comment, seq),
        l4 = m.l4
    )
}

fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse_save;
    use super::super::tests::{rule, sample};
    use super::super::IptablesFlavor;
    use super::*;

    #[test]
    fn output_rules_match_local_destinations_only() {
        let ipt = Iptables::new(IptablesFlavor::Legacy);
        let text = ipt.render_family(&sample(), Family::V4, &FamilyState::default());
        assert!(text.contains(
            "-A LOWPORT-OUTPUT -p tcp -m tcp --dport 80 -m addrtype --dst-type LOCAL -m comment --comment \"web [3]\" -j DNAT --to-destination 127.0.0.1:8080"
        ), "{text}");
        assert!(text.starts_with("# ipv4: iptables-legacy-restore -w --noflush\n*raw\n"));
        assert!(text.contains("-A LOWPORT-GUARD ! -i lo -d 127.0.0.0/8"));
        assert_eq!(text.matches("COMMIT").count(), 2);
    }

    #[test]
    fn old_jumps_are_deleted_before_the_new_one_and_stale_chains_go() {
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let now = FamilyState {
            nat: parse_save(
                ":PREROUTING ACCEPT [0:0]\n:LOWPORT-POSTROUTING - [0:0]\n:LOWPORT-PREROUTING - [0:0]\n\
                 -A PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING\n\
                 -A POSTROUTING -m comment --comment lowport -j LOWPORT-POSTROUTING\n",
            ),
            raw: TableState::default(),
        };
        let rs = RuleSet {
            nat: vec![rule(
                Hook::Prerouting,
                None,
                NatAction::Redirect { port: 8080 },
            )],
            ..RuleSet::default()
        };
        let text = ipt.render_family(&rs, Family::V4, &now);
        let del = text
            .find("-D PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING")
            .unwrap();
        let ins = text
            .find("-I PREROUTING 1 -m comment --comment lowport -j LOWPORT-PREROUTING")
            .unwrap();
        assert!(del < ins, "{text}");
        assert!(
            text.contains("-D POSTROUTING -m comment --comment lowport -j LOWPORT-POSTROUTING\n")
        );
        assert!(
            text.contains("-F LOWPORT-POSTROUTING\n-X LOWPORT-POSTROUTING\n"),
            "{text}"
        );
        assert!(!text.contains("*raw"), "{text}");
    }

    #[test]
    fn rollback_restores_chains_rules_and_jumps_as_saved() {
        let before = FamilyState {
            nat: parse_save(
                ":PREROUTING ACCEPT [0:0]\n:LOWPORT-PREROUTING - [0:0]\n\
                 -A PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING\n\
                 -A LOWPORT-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment \"web [0]\" -j REDIRECT --to-ports 8080\n",
            ),
            raw: TableState::default(),
        };
        let now = FamilyState {
            nat: parse_save(
                ":PREROUTING ACCEPT [0:0]\n:LOWPORT-PREROUTING - [0:0]\n:LOWPORT-POSTROUTING - [0:0]\n\
                 -A PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING\n\
                 -A POSTROUTING -m comment --comment lowport -j LOWPORT-POSTROUTING\n\
                 -A LOWPORT-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment \"web [0]\" -j REDIRECT --to-ports 9090\n",
            ),
            raw: TableState::default(),
        };
        let text = render_rollback(&before, &now);
        assert_eq!(
            text,
            "*nat\n\
             :LOWPORT-PREROUTING - [0:0]\n\
             -D PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING\n\
             -D POSTROUTING -m comment --comment lowport -j LOWPORT-POSTROUTING\n\
             -F LOWPORT-POSTROUTING\n\
             -X LOWPORT-POSTROUTING\n\
             -A LOWPORT-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment \"web [0]\" -j REDIRECT --to-ports 8080\n\
             -I PREROUTING 1 -m comment --comment lowport -j LOWPORT-PREROUTING\n\
             COMMIT\n"
        );
        // Nothing changed: nothing to send (raw untouched above as well).
        assert_eq!(render_rollback(&before, &before), "");
    }

    #[test]
    fn jumps_come_from_the_builtin_chain_of_the_same_name() {
        let rs = sample();
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let v4 = ipt.render_family(&rs, Family::V4, &FamilyState::default());
        let v6 = ipt.render_family(&rs, Family::V6, &FamilyState::default());
        let jumps = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("-I "))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            jumps(&v4),
            [
                "-I PREROUTING 1 -m comment --comment lowport -j LOWPORT-GUARD",
                "-I PREROUTING 1 -m comment --comment lowport -j LOWPORT-PREROUTING",
                "-I OUTPUT 1 -m comment --comment lowport -j LOWPORT-OUTPUT",
            ]
        );
        // The masquerade target is IPv6: its chain is in the IPv6 input only.
        assert_eq!(
            jumps(&v6),
            [
                "-I PREROUTING 1 -m comment --comment lowport -j LOWPORT-PREROUTING",
                "-I OUTPUT 1 -m comment --comment lowport -j LOWPORT-OUTPUT",
                "-I POSTROUTING 1 -m comment --comment lowport -j LOWPORT-POSTROUTING",
            ]
        );
    }

    #[test]
    fn each_family_gets_only_its_own_rules() {
        let rs = sample();
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let v4 = ipt.render_family(&rs, Family::V4, &FamilyState::default());
        let v6 = ipt.render_family(&rs, Family::V6, &FamilyState::default());
        assert!(
            v4.starts_with("# ipv4: iptables-nft-restore -w --noflush\n"),
            "{v4}"
        );
        assert!(
            v6.starts_with("# ipv6: ip6tables-nft-restore -w --noflush\n"),
            "{v6}"
        );
        // The guard is IPv4 only.
        assert!(v4.contains("*raw\n") && !v6.contains("*raw"), "{v6}");
        assert!(!v6.contains("127.0.0.0"), "{v6}");
        // [0] is IPv6 only, [1] and [3] IPv4 only, [2] both.
        for (text, has, lacks) in [
            (&v4, ["[1]", "[2]", "[3]"], ["[0]", "h3 [0]", "fd00::5"]),
            (
                &v6,
                ["web [0]", "[2]", "h3 [0]"],
                ["[1]", "[3]", "127.0.0.1"],
            ),
        ] {
            for h in has {
                assert!(text.contains(h), "{h} missing in\n{text}");
            }
            for l in lacks {
                assert!(!text.contains(l), "{l} in\n{text}");
            }
        }
        // No guard and nothing of it left: no raw table at all; a guard
        // left from before: the raw table, to remove it.
        let no_guard = RuleSet {
            loopback_guard: false,
            ..sample()
        };
        let v4 = ipt.render_family(&no_guard, Family::V4, &FamilyState::default());
        assert!(!v4.contains("*raw"), "{v4}");
        let had_guard = FamilyState {
            raw: parse_save(
                ":LOWPORT-GUARD - [0:0]\n-A PREROUTING -m comment --comment lowport -j LOWPORT-GUARD\n",
            ),
            ..FamilyState::default()
        };
        let v4 = ipt.render_family(&no_guard, Family::V4, &had_guard);
        assert!(
            v4.contains("*raw\n-D PREROUTING -m comment --comment lowport -j LOWPORT-GUARD\n-F LOWPORT-GUARD\n-X LOWPORT-GUARD\nCOMMIT\n"),
            "{v4}"
        );
        // Only the chain left (its jump deleted by hand): still removed.
        let chain_only = FamilyState {
            raw: parse_save(":LOWPORT-GUARD - [0:0]\n"),
            ..FamilyState::default()
        };
        let v4 = ipt.render_family(&no_guard, Family::V4, &chain_only);
        assert!(
            v4.contains("*raw\n-F LOWPORT-GUARD\n-X LOWPORT-GUARD\nCOMMIT\n"),
            "{v4}"
        );
    }
}

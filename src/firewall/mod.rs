//! Rules mode: install, remove and read back lowport's NAT rules.
//!
//! [`plan`] decides what the rules are; a [`Backend`] puts them in the
//! kernel and reads them back. The backend is chosen in one place,
//! [`select_backend`].

pub mod conntrack;
pub mod iptables;
pub mod ledger;
pub mod nft;
pub mod plan;
pub mod sysctl;
pub mod watch;

use crate::config::RulesSettings;
use plan::{Family, RulePlan, RuleSet, Sysctl};

/// The directories helper programs (`nft`, `iptables-*-save/-restore`)
/// are looked up in: the system's own, never the inherited `PATH`, which
/// under sudo or a careless unit may name a directory another user can
/// write, and whose programs would then run as root.
pub const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The path of the system's `name`: the first of [`SYSTEM_DIRS`] that has
/// it, or `/usr/sbin/NAME` (which then fails to run, naming that path).
pub fn system_program(name: &str) -> std::path::PathBuf {
    SYSTEM_DIRS
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| std::path::Path::new(SYSTEM_DIRS[0]).join(name))
}

/// Name of the nftables table lowport owns (family `inet`).
pub const TABLE: &str = "lowport";

/// Errors of the firewall backends. Each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot open a netlink socket to nftables")]
    Socket(#[source] std::io::Error),
    #[error("the kernel rejected lowport's ruleset batch; the previous rules are still serving")]
    BatchRejected(#[source] std::io::Error),
    #[error("cannot read lowport's table back from the kernel")]
    List(#[source] std::io::Error),
    #[error("cannot delete lowport's table")]
    Remove(#[source] std::io::Error),
    #[error("the rules read back from the kernel differ from what was sent: sent {sent:?}; kernel {found:?}")]
    Verify {
        sent: Box<RuleSet>,
        found: Box<RuleSet>,
    },
    #[error("lowport's table holds a rule it did not write ({0}); remove it with `lowport rules remove` and apply again")]
    Foreign(String),
    #[error(
        "table inet lowport belongs to {holder}, which keeps lowport's rules in force.\n\
         To change the rules, edit the configuration and reload it \
         (`systemctl reload lowport-rules-watch`, or send it SIGHUP); \
         to take them away, stop it (`systemctl stop lowport-rules-watch`, or SIGTERM): \
         it removes them as it exits"
    )]
    OwnedByWatch { holder: String },
    #[error("{0}")]
    Other(String),
}

/// A way of putting a [`RuleSet`] into the kernel.
pub trait Backend {
    /// Short name for messages: "nftables", "iptables-nft", "iptables-legacy".
    fn name(&self) -> &'static str;
    /// Where the rules live, for messages: "table inet lowport".
    fn place(&self) -> &'static str;
    /// Replace lowport's rules with `rules`, atomically: if the kernel
    /// rejects them, the previous rules keep serving.
    fn apply(&mut self, rules: &RuleSet) -> Result<(), FirewallError>;
    /// Remove every rule lowport installed. Removing nothing succeeds.
    fn remove(&mut self) -> Result<(), FirewallError>;
    /// Read lowport's rules back from the kernel; `None` when none are installed.
    fn list(&mut self) -> Result<Option<RuleSet>, FirewallError>;
    /// Another live process that holds lowport's rules and refuses changes
    /// (a `rules watch` owning the nftables table), described for messages.
    fn held_by(&mut self) -> Option<String> {
        None
    }
    /// Exactly what `apply` would send, in the backend's own text form
    /// (`nft -f` script, `iptables-restore` input), for `--dry-run`.
    fn render(&self, rules: &RuleSet) -> String;
}

/// Why `rules apply` or `rules remove` failed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error(
        "{mappings} forward to another host, which needs {sysctl}=1, and it is 0. \
         Turn it on yourself (`sysctl -w {sysctl}=1`, and a file in /etc/sysctl.d/ to keep it), \
         or let lowport do it (and undo it on remove) with `rules: {{enable_forwarding: true}}`"
    )]
    ForwardingOff { sysctl: Sysctl, mappings: String },
    #[error("cannot read or change {sysctl}")]
    Sysctl {
        sysctl: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
}

/// What `apply` or `remove` changed besides the rules.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Sysctls set, with their new values.
    pub sysctls: Vec<(Sysctl, u8)>,
    /// UDP conntrack entries deleted so old flows stop going to old targets.
    pub flows_deleted: usize,
    /// An earlier apply or remove that never finished, whose leftovers
    /// this one replaced.
    pub repaired: Option<ledger::Op>,
}

fn sysctl_err(sysctl: impl ToString) -> impl FnOnce(std::io::Error) -> RulesError {
    let sysctl = sysctl.to_string();
    move |source| RulesError::Sysctl { sysctl, source }
}

/// Install `plan` with `backend`, keeping lowport's state in the state
/// directory ([`ledger::state_dir`]). See [`apply_in`].
pub fn apply(
    backend: &mut dyn Backend,
    plan: &RulePlan,
    settings: &RulesSettings,
) -> Result<Outcome, RulesError> {
    apply_in(&ledger::state_dir(), backend, plan, settings)
}

/// Install `plan` with `backend`, under the lock of the state directory
/// `state`: check forwarding, put back the sysctls the new rules no
/// longer need (while the old rules, and their guard, still stand),
/// replace the rules atomically, switch on the sysctls they need (after
/// the guard is in), forget UDP flows whose mapping went away, and verify
/// by reading the rules back. Every step that can fail without touching
/// the kernel (the state directory, the lock, forwarding) runs first; if
/// the rules are refused, the sysctls put back are switched on again, so
/// the previous rules keep serving as they did.
pub fn apply_in(
    state: &std::path::Path,
    backend: &mut dyn Backend,
    plan: &RulePlan,
    settings: &RulesSettings,
) -> Result<Outcome, RulesError> {
    let mut ledger = ledger::Ledger::lock(state)?;
    for &s in plan.sysctls.iter().filter(|s| s.is_forwarding()) {
        let on = sysctl::read(s).map_err(sysctl_err(s))? == 1;
        if !on && !settings.enable_forwarding {
            let family = if s == Sysctl::Ipv4Forward {
                Family::V4
            } else {
                Family::V6
            };
            let mut names: Vec<&str> = plan
                .rules
                .masquerade
                .iter()
                .filter(|m| Family::of(m.daddr) == family)
                .map(|m| m.comment.as_str())
                .collect();
            names.dedup();
            return Err(RulesError::ForwardingOff {
                sysctl: s,
                mappings: format!("mappings {}", names.join(", ")),
            });
        }
    }
    let repaired = ledger.interrupted();
    if let Some(op) = repaired {
        tracing::warn!(
            ledger = %ledger.path().display(),
            "an earlier `lowport {op}` was interrupted; replacing what it left"
        );
    }
    let before = match backend.list() {
        Ok(rules) => rules,
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "cannot read the current rules; replacing them anyway");
            None
        }
    };
    ledger.begin(ledger::Op::Apply)?;

    // Sysctls the new rules do not need go back first, while the rules
    // that needed them (and the guard that makes route_localnet safe) are
    // still in place.
    let mut sysctls = ledger.restore_except(&plan.sysctls)?;

    // Already in place (a re-run at boot, a config management pass):
    // replacing them would change nothing but cost a transaction.
    let unchanged = before.as_ref() == Some(&plan.rules);
    if unchanged {
        tracing::info!(
            backend = backend.name(),
            rules = plan.rules.nat.len(),
            "rules already in place; nothing replaced"
        );
    } else if let Err(e) = backend.apply(&plan.rules) {
        // The previous rules still serve: give them back their sysctls.
        for (s, _) in &sysctls {
            if let Err(again) = ledger.turn_on(*s) {
                tracing::warn!(sysctl = %s, error = %again, "cannot switch a sysctl back on for the previous rules");
            }
        }
        // A refused batch left the previous rules; anything else may have
        // left part of each, which the next apply, remove or check sees.
        if matches!(e, FirewallError::BatchRejected(_)) {
            ledger.finish()?;
        }
        return Err(e.into());
    } else {
        tracing::info!(
            backend = backend.name(),
            rules = plan.rules.nat.len(),
            "rules installed"
        );
    }

    // The new rules (with their guard) are in: now what they need.
    for &s in &plan.sysctls {
        if ledger.turn_on(s)? {
            sysctls.push((s, 1));
        }
    }
    for (s, v) in &sysctls {
        tracing::info!(sysctl = %s, value = v, "sysctl set");
    }

    let flows_deleted = forget_udp_flows(before.as_ref(), Some(&plan.rules));

    // Unchanged: `before` was that reading, taken a moment ago.
    let found = if unchanged { before } else { backend.list()? };
    ledger.finish()?;
    if found.as_ref() != Some(&plan.rules) {
        return Err(FirewallError::Verify {
            sent: Box::new(plan.rules.clone()),
            found: Box::new(found.unwrap_or_default()),
        }
        .into());
    }
    Ok(Outcome {
        sysctls,
        flows_deleted,
        repaired,
    })
}

/// Remove lowport's rules and put back every sysctl it changed, with the
/// state in the state directory. See [`remove_in`].
pub fn remove(backend: &mut dyn Backend) -> Result<Outcome, RulesError> {
    remove_in(&ledger::state_dir(), backend)
}

/// Remove lowport's rules and put back every sysctl it changed, under the
/// lock of the state directory `state`. The sysctls go back first:
/// route_localnet must never be on without the guard. Removing nothing
/// succeeds.
pub fn remove_in(
    state: &std::path::Path,
    backend: &mut dyn Backend,
) -> Result<Outcome, RulesError> {
    let mut ledger = ledger::Ledger::lock(state)?;
    let repaired = ledger.interrupted();
    let before = backend.list().unwrap_or_else(|e| {
        tracing::warn!(error = %crate::error_chain(&e), "cannot read the current rules; removing them anyway");
        None
    });
    ledger.begin(ledger::Op::Remove)?;
    let sysctls = ledger.restore_except(&[])?;
    backend.remove()?;
    ledger.finish()?;
    let flows_deleted = forget_udp_flows(before.as_ref(), None);
    Ok(Outcome {
        sysctls,
        flows_deleted,
        repaired,
    })
}

/// UDP has no connection to end: conntrack keeps sending a flow to the
/// target it was first translated to, even after the rule is gone. Delete
/// the entries of every UDP rule that was installed and is not any more.
/// A failure here is logged, not fatal: the rules themselves are in place.
fn forget_udp_flows(before: Option<&RuleSet>, after: Option<&RuleSet>) -> usize {
    let Some(before) = before else { return 0 };
    let mut done = Vec::new();
    let mut deleted = 0;
    for rule in before
        .nat
        .iter()
        .filter(|r| r.l4 == crate::mapping::L4::Udp)
    {
        let kept = after.is_some_and(|a| a.nat.contains(rule));
        let key = (rule.dport, rule.family);
        if kept || done.contains(&key) {
            continue;
        }
        done.push(key);
        match conntrack::delete_udp_flows(rule.dport, rule.family) {
            Ok(n) => deleted += n,
            Err(e) => tracing::warn!(
                port = rule.dport,
                error = %e,
                "cannot delete old UDP conntrack entries; existing flows may keep their old target until they time out"
            ),
        }
    }
    deleted
}

/// The real host: DNS through the system resolver, and "is this address
/// mine?" answered by trying to bind it (which succeeds exactly for local
/// addresses, without parsing interface lists).
pub struct SystemHost;

impl plan::HostView for SystemHost {
    fn resolve(&self, name: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
        use std::net::ToSocketAddrs;
        Ok((name, 0).to_socket_addrs()?.map(|a| a.ip()).collect())
    }

    fn is_local(&self, ip: std::net::IpAddr) -> bool {
        std::net::UdpSocket::bind((ip, 0)).is_ok()
    }
}

/// `rules show`: the installed rules as a table a person can read.
pub fn format_rules(backend: &dyn Backend, rules: &RuleSet) -> String {
    use std::fmt::Write;
    let mut rows: Vec<[String; 6]> = vec![[
        "NAME".into(),
        "PROTO".into(),
        "FAMILY".into(),
        "LISTEN".into(),
        "TARGET".into(),
        "CLIENTS".into(),
    ]];
    // One row per mapping-rule, with the hooks it is on merged, in the
    // order the rules come (indexed: a thousand mappings are two thousand
    // rules).
    let mut seen: Vec<(&plan::NatRule, Vec<plan::Hook>)> = Vec::new();
    let mut index: std::collections::HashMap<_, usize> = std::collections::HashMap::new();
    for r in &rules.nat {
        let key = (&r.comment, r.l4, r.family, r.daddr, r.dport, r.action);
        match index.get(&key) {
            Some(&i) => seen[i].1.push(r.hook),
            None => {
                index.insert(key, seen.len());
                seen.push((r, vec![r.hook]));
            }
        }
    }
    for (r, hooks) in seen {
        let listen = match r.daddr {
            Some(a) => std::net::SocketAddr::new(a, r.dport).to_string(),
            None => format!("*:{}", r.dport),
        };
        let target = match r.action {
            plan::NatAction::Redirect { port } => format!("this host:{port}"),
            plan::NatAction::Dnat { addr, port } => {
                std::net::SocketAddr::new(addr, port).to_string()
            }
        };
        let clients = hooks
            .iter()
            .map(|h| match h {
                plan::Hook::Prerouting => "remote",
                plan::Hook::Output => "local",
            })
            .collect::<Vec<_>>()
            .join("+");
        rows.push([
            r.comment.clone(),
            r.l4.to_string(),
            r.family.map_or("both".to_owned(), |f| f.to_string()),
            listen,
            target,
            clients,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!("lowport rules ({}, {}):\n", backend.name(), backend.place());
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    for m in &rules.masquerade {
        let _ = writeln!(
            out,
            "  masquerade {} to {} (replies from remote target of \"{}\" come back through this host)",
            m.l4,
            std::net::SocketAddr::new(m.daddr, m.dport),
            m.comment
        );
    }
    if rules.loopback_guard {
        let _ = writeln!(
            out,
            "  guard: packets to 127.0.0.0/8 that did not arrive on lo are dropped (route_localnet is on)"
        );
    }
    out
}

/// Choose the backend for `choice`, in one place.
///
/// `auto` (the default) is decided by [`auto_choice`]; the choice and its
/// reason are logged at `-v`.
pub fn select_backend(
    choice: crate::config::BackendChoice,
) -> Result<Box<dyn Backend>, FirewallError> {
    use crate::config::BackendChoice;
    match choice {
        BackendChoice::Auto => {
            let (choice, why) = auto_choice();
            tracing::info!(backend = %choice, "backend auto: {why}");
            select_backend(choice)
        }
        BackendChoice::Iptables => {
            let backend = iptables::Iptables::detect()?;
            tracing::info!(flavor = %backend.flavor(), "iptables backend");
            Ok(Box::new(backend))
        }
        BackendChoice::Nftables => Ok(Box::new(nft::Nftables::new())),
    }
}

/// What every chain the iptables backend makes starts with.
const IPTABLES_CHAIN_PREFIX: &str = "LOWPORT-";

/// What `--backend auto` picks, and why:
/// 1. iptables, when lowport's iptables chains are installed (so `show` and
///    `remove` find what an earlier `--backend iptables` put there);
/// 2. iptables (legacy), when legacy iptables NAT rules are in use: legacy
///    and nftables NAT both run, in an order set by hook priorities, not
///    by what anyone wrote, so lowport joins the tables already in use;
/// 3. nftables, when the kernel has nf_tables;
/// 4. iptables otherwise.
pub fn auto_choice() -> (crate::config::BackendChoice, String) {
    use crate::config::BackendChoice;
    use iptables::IptablesFlavor;
    for flavor in [IptablesFlavor::Legacy, IptablesFlavor::Nft] {
        let holds = match flavor {
            // Asked over netlink: iptables-nft-save for two tables and two
            // families is four processes, most of a `rules apply`'s time.
            // The tools are the fallback if netlink cannot answer.
            IptablesFlavor::Nft => match nft::iptables_nft_chains(&["nat", "raw"]) {
                Ok(chains) => chains.iter().any(|c| c.starts_with(IPTABLES_CHAIN_PREFIX)),
                Err(_) => flavor.holds_lowport_chains(),
            },
            // Legacy tables are looked up in /proc first: no process unless
            // a legacy nat or raw table exists.
            IptablesFlavor::Legacy => flavor.holds_lowport_chains(),
        };
        if holds {
            return (
                BackendChoice::Iptables,
                format!("lowport's chains are installed with iptables-{flavor}"),
            );
        }
    }
    if iptables::legacy_nat_in_use() {
        return (
            BackendChoice::Iptables,
            "legacy iptables NAT rules are in use on this host, and mixing them with \
             nftables NAT gives surprising precedence"
                .to_owned(),
        );
    }
    if nftables_supported() {
        return (
            BackendChoice::Nftables,
            "the kernel supports nftables".to_owned(),
        );
    }
    (
        BackendChoice::Iptables,
        "the kernel has no nf_tables module".to_owned(),
    )
}

/// Does the kernel have nf_tables? Asked of the kernel itself: a
/// `NFT_MSG_GETGEN` request is answered by nf_tables (built in or loaded
/// on demand) and refused with EOPNOTSUPP when it is missing; module files
/// and /sys/module say nothing about a built-in one.
pub fn nftables_supported() -> bool {
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_GETGEN: u16 = 16;
    const NFT_MSG_NEWGEN: u16 = 15;
    const NLMSG_ERROR: u16 = 2;
    let Ok(sock) = mnl::Socket::new(mnl::Bus::Netfilter) else {
        return false;
    };
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN).to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // port id
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, libc::NFNETLINK_V0 as u8, 0, 0]);
    if sock.send(&req).is_err() {
        return false;
    }
    let mut buf = vec![0u8; 8192];
    let Ok(n) = sock.recv_raw(&mut buf) else {
        return false;
    };
    let answer = buf.get(..n).unwrap_or_default();
    let ty = answer
        .get(4..6)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes);
    let error = answer
        .get(16..20)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes);
    match ty {
        Some(t) if t == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN => true,
        Some(NLMSG_ERROR) => error == Some(0),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_choice_knows_the_iptables_chain_names() {
        for chain in [
            iptables::CHAIN_PREROUTING,
            iptables::CHAIN_OUTPUT,
            iptables::CHAIN_POSTROUTING,
            iptables::CHAIN_GUARD,
        ] {
            assert!(chain.starts_with(IPTABLES_CHAIN_PREFIX), "{chain}");
        }
    }
}

//! The sysctls the rules need (route_localnet, forwarding), and
//! route_localnet left on without lowport's loopback guard.

use super::report::Findings;
use crate::config::Config;
use crate::firewall;
use crate::firewall::plan::{RulePlan, Sysctl};

pub(super) fn check_sysctl(
    f: &mut Findings,
    s: Sysctl,
    config: &Config,
    needed: bool,
    apply: &str,
) {
    let value = firewall::sysctl::read(s).ok();
    let why = match s {
        Sysctl::RouteLocalnet => "so remote clients can be sent to 127.0.0.1",
        _ => "to forward to a remote target",
    };
    match value {
        Some(1) => f.ok("sysctl", format!("{s}=1 ({why})")),
        _ if s.is_forwarding() && !config.rules.enable_forwarding => f.need(
            needed,
            "sysctl",
            format!("{s} is off; it is needed {why}, and the config does not let lowport turn it on"),
            format!("sudo sysctl -w {s}=1 (and a file in /etc/sysctl.d/), or `rules: {{enable_forwarding: true}}`"),
        ),
        _ => f.need(
            needed,
            "sysctl",
            format!("{s} is off; it is needed {why}"),
            format!("{apply} (sets it, and puts it back on remove)"),
        ),
    }
}

/// route_localnet=1 lets packets to 127.0.0.0/8 arriving from the LAN be
/// routed to local services; lowport's guard drops them. With the guard
/// gone (a `flush ruleset`, an `iptables-restore`) and the sysctl still on,
/// a neighbour that routes 127.0.0.0/8 at this host reaches services bound
/// to 127.0.0.1 (the CVE-2020-8558 class).
pub(super) fn check_loopback_exposure(
    f: &mut Findings,
    plan: &RulePlan,
    installed: Option<&firewall::plan::RuleSet>,
    apply: &str,
) {
    let on = firewall::sysctl::read(Sysctl::RouteLocalnet).ok() == Some(1);
    let guarded = installed.is_some_and(|r| r.loopback_guard);
    if !on || guarded {
        return;
    }
    let ours = plan.sysctls.contains(&Sysctl::RouteLocalnet);
    f.need(
        ours,
        "sysctl",
        format!(
            "{}=1 and lowport's loopback guard is not installed: hosts on the LAN that route 127.0.0.0/8 here reach services bound to 127.0.0.1",
            Sysctl::RouteLocalnet
        ),
        if ours {
            format!(
                "{apply} puts the guard back (or `sudo lowport rules remove` turns the sysctl off);                  run `lowport rules watch` (lowport-rules-watch.service) so that a firewall reload                  cannot remove the guard again"
            )
        } else {
            format!(
                "sudo sysctl -w {}=0, unless something on this host needs it",
                Sysctl::RouteLocalnet
            )
        },
    );
}

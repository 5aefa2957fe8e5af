//! `lowport check`: validate the configuration, then diagnose this host,
//! one finding a line (✓ fine, ✗ missing, ! worth knowing), each problem
//! with the command or setting that fixes it, and close with the simplest
//! way to serve these mappings here.
//!
//! What a host needs depends on how it serves the mappings, so the mode is
//! found first: *rules* when lowport's rules are installed, *proxy* when a
//! `lowport` process listens on a mapped port, *none* otherwise. Problems
//! of the mode in use are ✗ (exit 1); those of the other mode are ! (they
//! only matter if the host switches).
//!
//! Everything here reads: `/proc/net/{tcp,udp}{,6}` and `/proc/*/fd` for
//! listeners, `nft -j list ruleset` and `iptables-legacy-save` for other
//! firewalls (diagnosis only; the rules backends stay as they are), the
//! binary's `security.capability` xattr, `/proc/self/mountinfo`.
//!
//! One file per family of findings, in the order `run` prints them: the
//! config (here), `rules` (the mode, drift, an interrupted apply), `target`
//! (reading `listeners`), `sysctl`, `input` and `nat` (other firewalls, read
//! through `nft`), `capability` (the `proxy` findings: capability and
//! privilege). `recommend` writes the closing line; `report` holds the
//! findings and prints them.

mod capability;
mod input;
mod listeners;
mod nat;
mod nft;
mod recommend;
mod report;
mod rules;
mod sysctl;
mod target;
#[cfg(test)]
mod testutil;

pub use report::{apply_command, Finding, Mode, Report, Status};

use crate::config::{Config, Source};
use crate::firewall::plan::RulePlan;
use listeners::Listeners;
use report::Findings;
use rules::Installed;

/// Diagnose this host for `config`, read from `source` (named in the first
/// line, and in the commands suggested as fixes). The checks run in the
/// order their findings are printed.
pub fn run(config: &Config, plan: &RulePlan, source: &Source) -> Report {
    let apply = apply_command(source);
    let mut f = Findings(Vec::new());
    check_config(&mut f, config, plan, source);

    // Which mode is in use?
    let sockets = Listeners::read();
    let installed = Installed::read(&mut f, config);
    rules::check_state(&mut f, &apply);
    let proxies = sockets.proxies(config);
    let mode = if installed.rules.is_some() {
        Mode::Rules
    } else if !proxies.is_empty() {
        Mode::Proxy
    } else {
        Mode::None
    };

    // Per mapping: does something listen on the target, and as whom?
    for m in &config.mappings {
        target::check_target(&mut f, m, &sockets);
    }

    // Rules mode.
    let rules_needed = mode == Mode::Rules;
    rules::check_rules(&mut f, &installed, plan, mode, &apply);
    for &s in &plan.sysctls {
        sysctl::check_sysctl(&mut f, s, config, rules_needed, &apply);
    }
    sysctl::check_loopback_exposure(&mut f, plan, installed.rules.as_ref(), &apply);
    let ruleset = nft::nft_ruleset();
    input::check_input_filters(&mut f, config, ruleset.as_ref(), rules_needed);
    nat::check_nat_conflicts(&mut f, config, ruleset.as_ref(), installed.nat_priority());

    // Proxy mode.
    let unprivileged_ok = capability::check_unprivileged_ports(&mut f, config);
    capability::check_proxies(&mut f, &proxies);
    let cap_ok = capability::check_privileges(&mut f, unprivileged_ok);

    let problems = f.0.iter().any(|x| x.status == Status::Problem);
    let recommendation = recommend::recommend(
        config,
        mode,
        &f.0,
        unprivileged_ok,
        cap_ok,
        &installed.backend,
        &apply,
    );
    Report {
        ok: !problems,
        mode,
        findings: f.0,
        recommendation,
    }
}

/// The configuration is valid (it was parsed and planned before `run`),
/// with the planner's warnings.
fn check_config(f: &mut Findings, config: &Config, plan: &RulePlan, source: &Source) {
    let origin = source
        .effective_file()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-m mappings".to_owned());
    f.ok(
        "config",
        format!("{origin}: {} mapping(s), valid", config.mappings.len()),
    );
    for w in &plan.warnings {
        f.warn("config", w.clone(), None);
    }
}

//! lowport's own rules: which backend would serve, whether the rules are
//! installed and match the configuration (which decides the mode), and an
//! apply or remove that never finished.

use super::nat::IPTABLES_NAT_PRIORITY;
use super::report::{Findings, Mode, Status};
use crate::config::{BackendChoice, Config};
use crate::firewall;
use crate::firewall::plan::{RulePlan, RuleSet, NAT_PRIORITY};

/// lowport's rules as the chosen backend lists them.
pub(super) struct Installed {
    /// The backend the config chooses, and why.
    choice: (BackendChoice, String),
    /// The backend's name as it reports it.
    pub(super) backend: String,
    /// `None` when not installed, or when they cannot be read.
    pub(super) rules: Option<RuleSet>,
}

impl Installed {
    /// Read lowport's rules with the backend the config chooses; a finding
    /// when that backend cannot be used or read.
    pub(super) fn read(f: &mut Findings, config: &Config) -> Installed {
        let choice = match config.rules.backend {
            BackendChoice::Auto => firewall::auto_choice(),
            other => (other, "set in the config".to_owned()),
        };
        let (rules, backend) = match firewall::select_backend(choice.0) {
            Ok(mut backend) => {
                let name = backend.name();
                match backend.list() {
                    Ok(rules) => (rules, name.to_owned()),
                    Err(e) => {
                        f.warn(
                            "rules",
                            format!("cannot read lowport's rules with {name}: {e}"),
                            Some("run lowport check as root".into()),
                        );
                        (None, name.to_owned())
                    }
                }
            }
            Err(e) => {
                f.warn(
                    "rules",
                    format!("backend {} is not usable here: {e}", choice.0),
                    None,
                );
                (None, choice.0.to_string())
            }
        };
        Installed {
            choice,
            backend,
            rules,
        }
    }

    /// The priority lowport's nat rules run at with this backend.
    pub(super) fn nat_priority(&self) -> i64 {
        if self.choice.0 == BackendChoice::Iptables {
            IPTABLES_NAT_PRIORITY
        } else {
            i64::from(NAT_PRIORITY)
        }
    }
}

/// Are lowport's rules installed, and are they the ones the config asks for?
pub(super) fn check_rules(
    f: &mut Findings,
    installed: &Installed,
    plan: &RulePlan,
    mode: Mode,
    apply: &str,
) {
    let (backend_name, choice) = (&installed.backend, &installed.choice);
    match (&installed.rules, mode) {
        (Some(rules), _) if rules == &plan.rules => f.ok(
            "rules",
            format!("lowport's rules are installed ({backend_name}, {}) and match the config", choice.1),
        ),
        (Some(_), _) => f.push(
            Status::Problem,
            "rules",
            format!("the installed rules ({backend_name}) differ from what the config would install (drift)"),
            Some(apply.to_owned()),
        ),
        (None, Mode::Proxy) => f.ok("rules", "not installed (proxy mode is in use)".into()),
        (None, _) => f.push(
            Status::Problem,
            "rules",
            format!("lowport's rules are not installed ({backend_name} would be used: {})", choice.1),
            Some(format!("{apply}  (or run `lowport proxy`)")),
        ),
    }
}

/// lowport's own state: an apply or remove that never finished (killed,
/// power lost) may have left part of the old and part of the new rules.
pub(super) fn check_state(f: &mut Findings, apply: &str) {
    let dir = firewall::ledger::state_dir();
    match firewall::ledger::Ledger::peek(&dir) {
        Ok(Some(snap)) => {
            if let Some(op) = snap.pending {
                f.push(
                    Status::Problem,
                    "state",
                    format!("an earlier `lowport {op}` was interrupted; the rules and sysctls may be half changed"),
                    Some(format!("{apply} again (or `lowport rules remove`)")),
                );
            }
        }
        Ok(None) => {}
        Err(e) => f.push(Status::Problem, "state", format!("{e}"), None),
    }
}

//! Rules mode: install, remove and read back lowport's NAT rules.
//!
//! [`plan`] decides what the rules are; a [`Backend`] puts them in the
//! kernel and reads them back. The backend is chosen in one place,
//! [`select_backend`].

pub mod plan;

use plan::RuleSet;

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
    #[error("the rules read back from the kernel differ from what was sent:\n  sent:     {sent:?}\n  kernel:   {found:?}")]
    Verify {
        sent: Box<RuleSet>,
        found: Box<RuleSet>,
    },
    #[error("lowport's table holds a rule it did not write ({0}); remove it with `lowport rules remove` and apply again")]
    Foreign(String),
    #[error("{0}")]
    Other(String),
}

/// A way of putting a [`RuleSet`] into the kernel.
pub trait Backend {
    /// Short name for messages: "nftables", "iptables".
    fn name(&self) -> &'static str;
    /// Replace lowport's rules with `rules`, atomically: if the kernel
    /// rejects them, the previous rules keep serving.
    fn apply(&mut self, rules: &RuleSet) -> Result<(), FirewallError>;
    /// Remove every rule lowport installed. Removing nothing succeeds.
    fn remove(&mut self) -> Result<(), FirewallError>;
    /// Read lowport's rules back from the kernel; `None` when none are installed.
    fn list(&mut self) -> Result<Option<RuleSet>, FirewallError>;
    /// Exactly what `apply` would send, in the backend's own text form
    /// (`nft -f` script, `iptables-restore` input), for `--dry-run`.
    fn render(&self, rules: &RuleSet) -> String;
}

//! lowport: reach an unprivileged server on privileged ports, through kernel
//! NAT rules (nftables or iptables) or a zero-copy splice proxy, from one
//! YAML description.
//!
//! The modules, how a mapping travels from the YAML file to kernel rules or
//! a relayed connection, the relay's invariants and the kernel traps the
//! rule planner handles: `ARCHITECTURE.md` at the repository's root. The
//! user's view: `README.md`.

pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod firewall;
pub mod generate;
pub mod mapping;
pub mod privilege;
pub mod proxy;

/// An error's message, then each cause in its chain that no message before
/// it already quotes word for word: an error that puts its source in its
/// own text (`cannot read FILE: {source}`) would otherwise show it twice.
/// What `lowport` prints one a line, and logs joined by [`error_chain`].
pub fn error_messages(err: &dyn std::error::Error) -> Vec<String> {
    let mut shown = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !shown.iter().any(|s| s.contains(&text)) {
            shown.push(text);
        }
        source = cause.source();
    }
    shown
}

/// [`error_messages`] on one line, joined by ": ", for a log field.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    error_messages(err).join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that quotes its source in its own message, as
    /// `ConfigError::Read` does, above one that does not.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot read lowport.yaml: {source}")]
    struct Quoting {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot reload")]
    struct Outer(#[source] Quoting);

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let missing = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = Quoting { source: missing() };
        assert_eq!(
            error_messages(&e),
            [format!("cannot read lowport.yaml: {}", missing())]
        );
        // Quoted by a message further up than the one just above it.
        let e = Outer(Quoting { source: missing() });
        assert_eq!(
            error_chain(&e),
            format!("cannot reload: cannot read lowport.yaml: {}", missing())
        );
    }
}

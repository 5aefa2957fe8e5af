//! The command line, as clap derive types. The spellings here are a
//! contract with scripts and units (README.md, the man page): add, don't
//! rename.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{BackendChoice, Source};

/// Reach an unprivileged server on privileged ports (80, 443) without
/// running anything as root for long.
///
/// Two ways to serve the same mappings: `lowport rules apply` installs
/// kernel NAT rules once (nftables or iptables) and exits, `lowport rules
/// watch` installs them and keeps them in force; `lowport proxy`
/// relays connections itself, with only the cap_net_bind_service
/// capability, which it drops once its ports are bound.
#[derive(Debug, Parser)]
#[command(
    name = "lowport",
    version,
    after_help = "MAPPINGS:\n  \
      -m SPEC is [LISTEN_ADDR:]LISTEN_PORT:[TARGET_HOST:]TARGET_PORT[/tcp|/udp|/both]\n  \
      80:8080                      port 80 on every address -> port 8080 on this host\n  \
      0.0.0.0:80:127.0.0.1:8080    IPv4 port 80 -> a backend bound to 127.0.0.1 only\n  \
      [::]:443:[::1]:8443          IPv6 port 443 -> [::1]:8443\n  \
      443:8443/udp                 HTTP/3 (QUIC) on 443/udp -> 8443/udp\n\n\
    EXAMPLES:\n  \
      sudo lowport -m 80:8080 rules apply        serve :80 from an app on :8080\n  \
      sudo lowport -c /etc/lowport/lowport.yaml rules apply --dry-run\n  \
      sudo lowport -m 80:8080 rules watch        the same, kept through firewall reloads\n  \
      sudo lowport rules show                    what the kernel has now\n  \
      sudo lowport rules remove                  take it all away again\n\n\
    EXIT STATUS:\n  \
      0 success, 1 runtime failure (kernel, network, host), 2 bad usage or bad configuration"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// YAML configuration file. Default: /etc/lowport/lowport.yaml, unless
    /// -m is given (then no file is read).
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        env = "LOWPORT_CONFIG",
        global = true
    )]
    pub config: Option<PathBuf>,

    /// Add a mapping, after the file's (repeatable): 80:8080, 0.0.0.0:80:127.0.0.1:8080,
    /// [::]:443:[::1]:8443 (`lowport --help` lists the forms).
    #[arg(short = 'm', long = "map", value_name = "SPEC", global = true)]
    pub map: Vec<String>,

    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl GlobalArgs {
    /// Where the configuration comes from.
    pub fn source(&self) -> Source {
        Source {
            file: self.config.clone(),
            specs: self.map.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install, remove or show kernel NAT rules (one shot), or keep them in
    /// force (`rules watch`).
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Relay TCP connections in the foreground (splice(2), zero-copy): binds
    /// the listen ports, drops every privilege, then serves. SIGTERM/SIGINT
    /// drain and exit, SIGHUP reloads the configuration, SIGUSR1 logs counters.
    #[command(after_help = "WITHOUT ROOT:\n  \
      sudo setcap cap_net_bind_service=+ep /usr/local/libexec/lowport-proxy   (mode 0750, one group)\n  \
      lowport-proxy -v proxy     the capability is dropped once bound; such a binary\n                             \
      takes no -m and reads only a file root controls\n\n\
    SETTINGS (the proxy: section of the YAML file; man lowport has them all):\n  \
      max_connections: 4096             above it, new clients wait in the backlog\n  \
      max_connections_per_client: 512   per address (IPv6: /64); above it, reset\n  \
      connect_timeout: 5s               name lookup, then per address (max 10m)\n  \
      idle_timeout: 10m                 close when nothing moved (max 7 days)\n  \
      fin_timeout: 60s                  half-closed and silent this long (max 7 days)\n  \
      shutdown_timeout: 30s             after SIGTERM, live ones finish (max 1 day)\n  \
      user: nobody                      switched to after binding, when started as root")]
    Proxy,
    /// Validate the configuration, then diagnose this host: is something
    /// listening on each target (and as whom), are the rules installed and
    /// unchanged, do sysctls, input firewalls or other NAT tables get in the
    /// way, can the proxy bind its ports. One line per finding (✓ ✗ !), a
    /// fix for each problem, and the simplest way to serve the mappings
    /// here. Exit 0: all in place; 1: something is missing; 2: bad config.
    Check {
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (for packagers; see dist/completions).
    #[command(hide = true)]
    Completions {
        /// bash, zsh or fish.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page, roff (for packagers; see dist/man).
    #[command(hide = true)]
    Man,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Replace lowport's rules with the configured mappings, atomically.
    ///
    /// Rules live in a table lowport owns (`table inet lowport` with
    /// nftables): remote clients are redirected on prerouting, clients on
    /// this host on output (local destinations only, so the host's own
    /// connections to port 80 elsewhere are untouched). If the kernel
    /// rejects the new rules, the previous ones keep serving.
    Apply {
        #[command(flatten)]
        backend: BackendArg,
        /// Print what would be sent (an `nft -f` script) and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove lowport's rules and put back the sysctls it changed.
    /// Removing nothing succeeds.
    Remove {
        #[command(flatten)]
        backend: BackendArg,
    },
    /// Apply, then stay in the foreground and keep the rules in force.
    ///
    /// nftables: the table is owned by this process (Linux 5.12+), so
    /// `nft flush ruleset` and other processes leave it alone, and
    /// persistent (Linux 6.9+), so it keeps serving if watch dies and the
    /// next watch adopts it. Any change by someone else (older kernels,
    /// iptables-nft) is undone at once, the loopback guard first;
    /// iptables-legacy is read every --interval. SIGHUP re-reads the
    /// configuration and applies it (an invalid file is logged, the running
    /// rules stay); SIGTERM/SIGINT remove the rules and restore the
    /// sysctls, exit 0. Tells systemd when ready (Type=notify).
    Watch {
        #[command(flatten)]
        backend: BackendArg,
        /// How often to read iptables-legacy rules, which send no change
        /// notifications (one getsockopt per table when nothing changed).
        #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_interval)]
        interval: std::time::Duration,
        /// On SIGTERM/SIGINT leave the rules and sysctls in place (for a
        /// restart or upgrade; a persistent nftables table is then adopted
        /// by the next watch without a gap).
        #[arg(long)]
        keep_on_exit: bool,
    },
    /// Read lowport's rules back from the kernel and print them as mappings.
    Show {
        #[command(flatten)]
        backend: BackendArg,
    },
}

/// `--interval`: a humantime duration, at least 100ms.
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 2s, 500ms)"))?;
    if d < std::time::Duration::from_millis(100) {
        return Err("at least 100ms".into());
    }
    Ok(d)
}

/// `--backend`.
#[derive(Debug, Args, Clone, Copy)]
pub struct BackendArg {
    /// Firewall backend; default: the config's `rules.backend`, else auto:
    /// nftables when the kernel has it, unless lowport's iptables chains
    /// exist or legacy iptables NAT rules are in use (then iptables).
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub backend: Option<BackendFlag>,
}

/// Values of `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendFlag {
    Auto,
    Nftables,
    Iptables,
}

impl From<BackendFlag> for BackendChoice {
    fn from(f: BackendFlag) -> Self {
        match f {
            BackendFlag::Auto => BackendChoice::Auto,
            BackendFlag::Nftables => BackendChoice::Nftables,
            BackendFlag::Iptables => BackendChoice::Iptables,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["lowport", "rules", "apply", "-m", "80:8080", "--dry-run"])
            .unwrap();
        assert_eq!(cli.global.map, vec!["80:8080"]);
        assert!(matches!(
            cli.command,
            Command::Rules(RulesCommand::Apply { dry_run: true, .. })
        ));
    }
}

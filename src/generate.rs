//! Shell completions and the man page, generated from the clap definitions
//! so they cannot drift from the real command line. Packagers take the
//! copies in `dist/` (a test keeps them current) or run the hidden
//! `lowport completions SHELL` / `lowport man`.

use clap::CommandFactory;

use crate::cli::Cli;

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "lowport", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// `lowport.1`, in roff: clap's sections, then the configuration file,
/// signals, environment and files (what `--help` has no room for).
pub fn man_page() -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = clap_mangen::Man::new(Cli::command()).render(&mut out);
    let page = String::from_utf8_lossy(&out).into_owned();
    match page.find("\n.SH VERSION") {
        Some(at) => format!(
            "{}\n{}{}",
            &page[..at],
            MAN_SECTIONS.trim_end(),
            &page[at..]
        ),
        None => format!("{page}{MAN_SECTIONS}"),
    }
}

/// The man page's own sections. Every key the configuration parser accepts
/// is listed here (a test holds the two together).
const MAN_SECTIONS: &str = r#".SH CONFIGURATION FILE
A YAML file: \fB\-c\fR FILE, else \fBLOWPORT_CONFIG\fR, else /etc/lowport/lowport.yaml (not read when only \fB\-m\fR is given). Mappings from \fB\-m\fR come after the file's. Unknown keys are errors; every error names the file, the mapping (number and name) and the value, and exits 2.
.PP
.B mappings:
a list; each entry:
.TP
.B name
Optional label (1\-64 letters, digits, \-, _, .), unique; shown in logs, rule comments and \fBrules show\fR.
.TP
.B listen
"[ADDR:]PORT". No ADDR: every local address, IPv4 and IPv6. 0.0.0.0:PORT is every IPv4 address only, "[::]:PORT" every IPv6 address only.
.TP
.B to
"[HOST:]PORT". No HOST: this machine. HOST is an address or a name (resolved when rules are applied; per connection in proxy mode).
.TP
.B protocol
tcp (default), udp or both (TCP and UDP on the same port). In proxy mode a UDP mapping takes no proxy_protocol; a host name in \fBto\fR is resolved for each new flow, as for each TCP connection (its first datagrams wait for the answer, at most connect_timeout).
.TP
.B proxy_protocol
Proxy mode: off (default), v1 or v2: send a PROXY protocol header with the client's address to the backend first.
.PP
.B proxy:
settings of \fBlowport proxy\fR (durations: 500ms, 5s, 10m, 1h, or a number of seconds; at least 1ms, and a longer one than its limit is refused):
.TP
.B max_connections
Client connections at once (default 4096); above it accepting pauses and clients wait in the listen backlog.
.TP
.B max_connections_per_client
Connections at once from one client address, IPv6 addresses counted by their /64 and v4\-mapped ones as IPv4 (default 512: one address cannot take every slot, an office behind one NAT address still fits). Above it a new connection is accepted and reset at once (counted as client_limit_resets); at or above max_connections there is no per\-client limit.
.TP
.B connect_timeout
For the backend name's lookup, then for each resolved address (default 5s, at most 10m); when all fail the client is reset.
.TP
.B idle_timeout
Close a connection when neither side sent anything for this long (default 10m, at most 7 days); with bytes still in flight both sides are reset instead.
.TP
.B fin_timeout
How long a half\-closed connection may stay silent before it is closed (default 60s, at most 7 days); it counts from the half\-close or the last byte moved, whichever came later.
.TP
.B shutdown_timeout
After SIGTERM, how long live connections may finish before they are reset (default 30s, at most 1 day).
.TP
.B user
The user to switch to after binding, when started as root (default nobody). Neither root nor a user whose primary group is root (gid 0) is accepted; supplementary groups are cleared.
.TP
.B udp_idle_timeout
End a UDP flow when no datagram went either way for this long (default 180s, longer than the kernel's 120 s conntrack timeout that QUIC keep\-alives are tuned to; at most 1 day).
.TP
.B udp_max_flows
UDP flows (client addresses) at once (default 16384, at most 1048576); above it datagrams from new clients are dropped and counted.
.TP
.B udp_receive_buffer
The receive buffer asked for each UDP listening socket (SO_RCVBUF; default 4MiB, from 4KiB to 1GiB, in bytes or with KiB, MiB or GiB): what a burst of datagrams can fill before the kernel drops them. The kernel grants at most net.core.rmem_max (212992 bytes on many systems), and the proxy says so at start when it got less: raise it as root, e.g. \fBsysctl \-w net.core.rmem_max=4194304\fR and the same line in a file in /etc/sysctl.d/. A larger buffer already on the socket (systemd's ReceiveBuffer=) is kept.
.PP
.B rules:
settings of \fBlowport rules\fR:
.TP
.B backend
auto (default), nftables or iptables. auto picks iptables when lowport's iptables chains are installed or legacy iptables NAT rules are in use (mixing them with nftables NAT gives surprising precedence), else nftables when the kernel has it, else iptables; \fB\-v\fR logs the choice and why.
.TP
.B enable_forwarding
May \fBrules apply\fR turn on IP forwarding for targets on other hosts (default false)?
.SH SIGNALS
\fBlowport proxy\fR:
.TP
.B SIGTERM, SIGINT
Stop accepting, let live connections finish for up to shutdown_timeout (then reset them), exit 0.
.TP
.B SIGHUP
Re\-read the configuration: unchanged listeners are kept, new ones bound if possible, removed ones closed; live connections continue under the new timeouts, and so do the UDP flows of kept listeners (a removed UDP listener's flows end with it). An invalid file is logged and the old configuration keeps serving.
.TP
.B SIGUSR1
Log the counters (accepted, active, refused, bytes each way, splice fallbacks, errors by kind, client_limit_resets; for UDP: flows opened, open and expired, datagrams and bytes each way, ICMP errors, drops by reason).
.PP
\fBlowport rules watch\fR:
.TP
.B SIGTERM, SIGINT
Remove the rules and put back the sysctls lowport changed, exit 0; with \fB\-\-keep\-on\-exit\fR leave both in place (a persistent nftables table is then adopted by the next watch without a gap).
.TP
.B SIGHUP
Re\-read the configuration and apply it; an invalid file or a rule set the kernel refuses is logged and the running rules stay.
.SH ENVIRONMENT
.TP
.B LOWPORT_CONFIG
The configuration file, when \fB\-c\fR is not given. Refused, as is \fB\-m\fR, when lowport gained privilege from its file (a file capability such as cap_net_bind_service=+ep, or set\-user\-ID): then it reads only a configuration file owned by root and writable by no one else, in directories owned by root and writable by no one else (not /tmp), and exits 2 otherwise.
.TP
.B LOWPORT_STATE_DIR
The state directory of \fBrules\fR, instead of /run/lowport (FILES). Refused, as \fBLOWPORT_CONFIG\fR is, when lowport gained privilege from its file.
.TP
.B LOWPORT_IPTABLES
nft or legacy: the iptables flavour the iptables backend uses. Unset: the flavour that holds lowport's chains, else legacy when legacy NAT rules are in use, else the host's default (\fBiptables \-\-version\fR).
.TP
.B RUST_LOG
A log filter (e.g. debug) that overrides \fB\-v\fR and \fB\-q\fR.
.SH FILES
.TP
/etc/lowport/lowport.yaml
The default configuration file.
.TP
lowport\-rules\-watch.service, lowport\-rules.service, lowport\-proxy.service, lowport\-proxy.socket
systemd units (dist/systemd; the Debian package installs them, disabled, in /usr/lib/systemd/system): \fBrules watch\fR (Type=notify), which keeps the rules in force through firewall reloads; rules applied once at boot and again after an nftables.service reload; the proxy with only CAP_NET_BIND_SERVICE, or socket\-activated with none.
.TP
/run/lowport/
What \fBrules apply\fR changed (each sysctl's value before it, per network namespace), so \fBrules remove\fR restores it even after a firewall flush; and the lock that lets one apply or remove run at a time. It must be owned by root and writable by no one else.
.TP
/usr/share/doc/lowport/examples/
Documented configurations for the common cases (the Debian package).
.SH SEE ALSO
nft(8), iptables\-restore(8), setcap(8), capabilities(7), systemd.socket(5)
"#;

/// Every generated file, by its path under `dist/`.
pub fn dist_files() -> Vec<(String, String)> {
    use clap_complete::Shell;
    vec![
        ("man/lowport.1".into(), man_page()),
        ("completions/lowport.bash".into(), completions(Shell::Bash)),
        ("completions/_lowport".into(), completions(Shell::Zsh)),
        ("completions/lowport.fish".into(), completions(Shell::Fish)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The committed copies in dist/ are what the current CLI generates.
    /// `LOWPORT_BLESS=1 cargo test generated_files` rewrites them.
    #[test]
    fn generated_files_in_dist_are_current() {
        let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
        let bless = std::env::var_os("LOWPORT_BLESS").is_some();
        for (rel, text) in dist_files() {
            let path = dist.join(&rel);
            if bless {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &text).unwrap();
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "dist/{rel} is stale: regenerate with `LOWPORT_BLESS=1 cargo test generated_files`"
            );
        }
    }

    /// Every key the configuration parser accepts is in the man page: the
    /// parser's own list, from its "unknown field" error for each section.
    #[test]
    fn man_page_lists_every_configuration_key() {
        let man = man_page();
        let m = "mappings:\n  - listen: 80\n    to: 8080\n";
        for yaml in [
            "zz_probe: 1\n".to_owned(),
            "mappings:\n  - listen: 80\n    to: 8080\n    zz_probe: 1\n".to_owned(),
            format!("{m}proxy:\n  zz_probe: 1\n"),
            format!("{m}rules:\n  zz_probe: 1\n"),
        ] {
            let err = crate::config::parse_str(&yaml, Path::new("probe.yaml"))
                .unwrap_err()
                .to_string();
            let keys: Vec<&str> = err
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|k| *k != "zz_probe")
                .collect();
            assert!(!keys.is_empty(), "no keys in {err}");
            for key in keys {
                assert!(
                    man.contains(&format!(".B {key}\n")) || man.contains(&format!(".B {key}:\n")),
                    "the man page does not describe `{key}`"
                );
            }
        }
        for section in ["CONFIGURATION FILE", "SIGNALS", "ENVIRONMENT", "FILES"] {
            assert!(man.contains(&format!(".SH {section}")), "{section}");
        }
    }

    /// The settings `lowport proxy --help` shows are the defaults: its lines
    /// under SETTINGS, read as the proxy: section, give the default settings.
    #[test]
    fn proxy_help_shows_the_default_settings() {
        let mut cmd = Cli::command();
        // A fixed width: clap wraps to the terminal (COLUMNS), and a wrapped
        // setting's comment would read as a line of its own.
        let help = cmd
            .find_subcommand_mut("proxy")
            .expect("proxy subcommand")
            .clone()
            .term_width(200)
            .render_help()
            .to_string();
        let settings: Vec<&str> = help
            .lines()
            .skip_while(|l| !l.starts_with("SETTINGS"))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .map(|l| l.trim().split("   ").next().unwrap_or(""))
            .collect();
        assert_eq!(settings.len(), 7, "{help}");
        let yaml = format!(
            "mappings:\n  - listen: 80\n    to: 8080\nproxy:\n  {}\n",
            settings.join("\n  ")
        );
        let parsed = crate::config::parse_str(&yaml, Path::new("help.yaml")).expect(&yaml);
        assert_eq!(
            parsed.proxy,
            crate::config::ProxySettings::default(),
            "{yaml}"
        );
    }

    #[test]
    fn man_page_and_completions_know_the_commands() {
        let man = man_page();
        assert!(man.contains("lowport") && man.contains("rules"), "{man}");
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let c = completions(shell);
            assert!(c.contains("check") && c.contains("backend"), "{shell}");
        }
    }
}

//! `lowport rules --backend iptables`, end to end, under both flavours of
//! the tools (iptables-nft and iptables-legacy): the real binary inside
//! namespaces this test makes, real traffic from a remote host (the other
//! end of a veth pair) and from the host itself, to a backend that runs as
//! nobody. The same traffic suite as the nftables backend's.

mod common;
use common::*;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rules/examples")
        .join(name)
        .display()
        .to_string()
}

fn tempfile(name: &str, text: &str) -> PathBuf {
    let dir = common::process_dir("lowport-ipt-test");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("temp file");
    p
}

/// One flavour of the iptables tools.
#[derive(Clone, Copy)]
struct Flavor(&'static str);

impl Flavor {
    fn tool(self, family: &str, action: &str) -> String {
        let base = if family == "6" {
            "ip6tables"
        } else {
            "iptables"
        };
        match action {
            "" => format!("{base}-{}", self.0),
            a => format!("{base}-{}-{a}", self.0),
        }
    }

    /// `lowport ARGS` in `ns` with this flavour forced. `rules` subcommands
    /// get `--backend iptables` appended.
    fn lowport(self, ns: &Netns, args: &[&str]) -> Output {
        let mut cmd = ns.command(lowport_bin());
        cmd.env("LOWPORT_IPTABLES", self.0).args(args);
        if args.contains(&"rules") {
            cmd.args(["--backend", "iptables"]);
        }
        cmd.output().expect("run lowport")
    }

    fn lowport_ok(self, ns: &Netns, args: &[&str]) -> String {
        let out = self.lowport(ns, args);
        assert!(
            out.status.success(),
            "lowport {args:?} ({}) failed ({}):\n{}{}",
            self.0,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `iptables-save -t TABLE` of this flavour, without comment lines
    /// (they hold dates and counters).
    fn save(self, ns: &Netns, family: &str, table: &str) -> String {
        ns.ok(&self.tool(family, "save"), &["-t", table])
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Everything of lowport's in both families' nat and raw tables.
    fn lowport_lines(self, ns: &Netns) -> Vec<String> {
        let mut lines = Vec::new();
        for (family, table) in [("4", "nat"), ("4", "raw"), ("6", "nat")] {
            lines.extend(
                self.save(ns, family, table)
                    .lines()
                    .filter(|l| l.contains("LOWPORT") || l.contains("lowport"))
                    .map(|l| format!("{family}/{table}: {l}")),
            );
        }
        lines
    }
}

const FLAVORS: [Flavor; 2] = [Flavor("nft"), Flavor("legacy")];

fn redirect_serves_remote_and_local_clients(fl: Flavor) {
    let mut lan = Lan::new(&format!("ir{}", &fl.0[..1]));
    lan.host.start_backend("[::]:8080");
    let v4 = format!("{}:80", Lan::HOST_V4);
    let v6 = format!("[{}]:80", Lan::HOST_V6);
    assert!(lan.remote.tcp_banner(&v4).is_err(), "nothing mapped yet");

    let out = fl.lowport_ok(
        &lan.host,
        &["-c", &example("01-web.yaml"), "rules", "apply"],
    );
    assert!(out.contains("installed"), "{out}");
    // Exactly one jump per chain, at position 1, in both families.
    for family in ["4", "6"] {
        let nat = fl.save(&lan.host, family, "nat");
        let first_pre = nat.lines().find(|l| l.starts_with("-A PREROUTING"));
        assert_eq!(
            first_pre,
            Some("-A PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING"),
            "{nat}"
        );
        assert_eq!(nat.matches("-j LOWPORT-OUTPUT").count(), 1, "{nat}");
        assert!(nat.contains("--comment \"web [0]\""), "{nat}");
    }

    assert_reaches(&lan.remote, &v4, 8080, Some(Lan::REMOTE_V4));
    assert_reaches(&lan.remote, &v6, 8080, Some(Lan::REMOTE_V6));
    for local in ["127.0.0.1:80", "[::1]:80", v4.as_str(), v6.as_str()] {
        assert_reaches(&lan.host, local, 8080, None);
    }

    let show = fl.lowport_ok(&lan.host, &["rules", "show"]);
    assert!(
        show.contains("web") && show.contains("*:80") && show.contains("this host:8080"),
        "{show}"
    );
    assert!(show.contains("remote+local"), "{show}");
    assert!(show.contains(&format!("iptables-{}", fl.0)), "{show}");

    fl.lowport_ok(&lan.host, &["rules", "remove"]);
    assert_eq!(fl.lowport_lines(&lan.host), Vec::<String>::new());
    assert!(lan.remote.tcp_banner(&v4).is_err(), "closed again");
    let show = fl.lowport_ok(&lan.host, &["rules", "show"]);
    assert!(show.contains("no rules installed"), "{show}");
}

fn hosts_own_outgoing_port_80_is_not_hijacked(fl: Flavor) {
    let mut lan = Lan::new(&format!("ih{}", &fl.0[..1]));
    lan.host.start_backend("[::]:8080");
    lan.remote
        .ok("sysctl", &["-qw", "net.ipv4.ip_unprivileged_port_start=0"]);
    lan.remote.start_backend("[::]:80");
    fl.lowport_ok(&lan.host, &["-m", "80:8080", "rules", "apply"]);
    for addr in [
        format!("{}:80", Lan::REMOTE_V4),
        format!("[{}]:80", Lan::REMOTE_V6),
    ] {
        let banner = lan.host.tcp_banner(&addr).expect("host reaches remote:80");
        assert!(
            banner.contains(":80 peer "),
            "the host's own connection to {addr} was redirected: {banner}"
        );
    }
    assert_reaches(&lan.host, "127.0.0.1:80", 8080, None);
    assert_reaches(&lan.host, "[::1]:80", 8080, None);
}

fn loopback_only_backend_is_reachable_but_guarded(fl: Flavor) {
    let mut lan = Lan::new(&format!("il{}", &fl.0[..1]));
    lan.host.start_backend("127.0.0.1:8080");
    assert_eq!(lan.host.sysctl("net.ipv4.conf.all.route_localnet"), "0");
    fl.lowport_ok(
        &lan.host,
        &["-c", &example("04-loopback-backend.yaml"), "rules", "apply"],
    );
    assert_eq!(lan.host.sysctl("net.ipv4.conf.all.route_localnet"), "1");
    let raw = fl.save(&lan.host, "4", "raw");
    assert!(
        raw.contains("-A PREROUTING -m comment --comment lowport -j LOWPORT-GUARD"),
        "{raw}"
    );

    assert_reaches(
        &lan.remote,
        &format!("{}:80", Lan::HOST_V4),
        8080,
        Some(Lan::REMOTE_V4),
    );
    assert_reaches(&lan.host, "127.0.0.1:80", 8080, None);
    assert_reaches(&lan.host, &format!("{}:80", Lan::HOST_V4), 8080, None);

    // A hostile neighbour routes 127.0.0.0/8 to the host and tries the
    // backend directly.
    lan.make_remote_route_loopback_to_host();
    let attempt = || lan.remote_connects_to_host_loopback(8080);
    assert!(
        attempt().is_err(),
        "the guard let a neighbour reach 127.0.0.1:8080"
    );
    // Control: without the guard the same attempt gets through.
    lan.host
        .ok(&fl.tool("4", ""), &["-t", "raw", "-F", "LOWPORT-GUARD"]);
    assert!(
        attempt().is_ok(),
        "the neighbour cannot reach 127.0.0.1 even unguarded"
    );

    fl.lowport_ok(&lan.host, &["rules", "remove"]);
    assert_eq!(lan.host.sysctl("net.ipv4.conf.all.route_localnet"), "0");
    assert_eq!(fl.lowport_lines(&lan.host), Vec::<String>::new());
}

fn udp_is_mapped_over_v4_and_v6(fl: Flavor) {
    let mut lan = Lan::new(&format!("iu{}", &fl.0[..1]));
    lan.host.start_backend("[::]:8443");
    fl.lowport_ok(&lan.host, &["-m", "443:8443/udp", "rules", "apply"]);
    for addr in [
        format!("{}:443", Lan::HOST_V4),
        format!("[{}]:443", Lan::HOST_V6),
    ] {
        let banner = lan.remote.udp_banner(&addr).expect("udp through the rules");
        assert!(banner.contains(":8443 peer "), "{addr}: {banner}");
    }
    let local = lan.host.udp_banner("127.0.0.1:443").expect("local udp");
    assert!(local.contains(":8443 peer "), "{local}");
    fl.lowport_ok(&lan.host, &["rules", "remove"]);
}

fn reapply_identical_remove_idempotent_others_untouched(fl: Flavor) {
    let ns = Netns::new(&format!("ii{}", &fl.0[..1]));
    // Someone else's rules, in the same tables and built-in chains.
    let ipt = fl.tool("4", "");
    ns.ok(
        &ipt,
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "2222",
            "-j",
            "REDIRECT",
            "--to-ports",
            "22",
        ],
    );
    ns.ok(
        &ipt,
        &[
            "-t",
            "raw",
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "--dport",
            "53",
            "-j",
            "ACCEPT",
        ],
    );
    ns.ok(
        &ipt,
        &["-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],
    );
    let others = |ns: &Netns| {
        let mut s = String::new();
        for (f, t) in [("4", "nat"), ("4", "raw"), ("4", "filter"), ("6", "nat")] {
            s.push_str(
                &fl.save(ns, f, t)
                    .lines()
                    .filter(|l| !l.contains("LOWPORT") && !l.contains("lowport"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
        }
        s
    };
    let before = others(&ns);

    fl.lowport_ok(&ns, &["rules", "remove"]);
    let cfg = example("04-loopback-backend.yaml");
    fl.lowport_ok(&ns, &["-c", &cfg, "rules", "apply"]);
    let first = fl.lowport_lines(&ns);
    assert!(!first.is_empty());
    fl.lowport_ok(&ns, &["-c", &cfg, "rules", "apply"]);
    assert_eq!(fl.lowport_lines(&ns), first, "re-apply changed the rules");
    // A smaller rule set drops the guard chain and its jump.
    fl.lowport_ok(&ns, &["-m", "80:8080", "rules", "apply"]);
    let smaller = fl.lowport_lines(&ns);
    assert!(!smaller.iter().any(|l| l.contains("GUARD")), "{smaller:#?}");
    assert_eq!(others(&ns), before);

    fl.lowport_ok(&ns, &["rules", "remove"]);
    fl.lowport_ok(&ns, &["rules", "remove"]);
    assert_eq!(fl.lowport_lines(&ns), Vec::<String>::new());
    assert_eq!(others(&ns), before, "someone else's rules were touched");
}

fn remote_target_forwards_and_masquerades(fl: Flavor) {
    let lan = Lan::new(&format!("if{}", &fl.0[..1]));
    let mut upstream = lan.add_upstream(&format!("ifu{}", &fl.0[..1]));
    upstream.start_backend("0.0.0.0:8080");

    let yaml = tempfile(
        &format!("fw-{}.yaml", fl.0),
        "mappings:\n  - name: upstream\n    listen: 80\n    to: \"10.232.0.2:8080\"\nrules:\n  enable_forwarding: true\n",
    );
    let path = yaml.to_string_lossy().into_owned();
    // Refused while forwarding is off and not allowed.
    let out = fl.lowport(&lan.host, &["-m", "81:10.232.0.2:8080", "rules", "apply"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fl.lowport_lines(&lan.host), Vec::<String>::new());

    fl.lowport_ok(&lan.host, &["-c", &path, "rules", "apply"]);
    assert_eq!(lan.host.sysctl("net.ipv4.ip_forward"), "1");
    let banner = lan
        .remote
        .tcp_banner(&format!("{}:80", Lan::HOST_V4))
        .expect("remote client reaches the upstream through the host");
    assert!(
        banner.starts_with("backend 10.232.0.2:8080 peer 10.232.0.1:"),
        "{banner}"
    );
    // A local client through its own address. (From 127.0.0.1 the kernel
    // refuses to send a loopback source out of eth0 unless route_localnet
    // is on, which the plan does not turn on for remote targets.)
    assert_reaches(&lan.host, &format!("{}:80", Lan::HOST_V4), 8080, None);
    let show = fl.lowport_ok(&lan.host, &["rules", "show"]);
    assert!(show.contains("masquerade tcp to 10.232.0.2:8080"), "{show}");
    fl.lowport_ok(&lan.host, &["rules", "remove"]);
    assert_eq!(lan.host.sysctl("net.ipv4.ip_forward"), "0");
    assert_eq!(fl.lowport_lines(&lan.host), Vec::<String>::new());
}

/// Feed `input` to a restore tool in `ns`.
fn restore(ns: &Netns, tool: &str, input: &str) -> Output {
    let mut child = ns
        .command(tool)
        .args(["-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run restore");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    child.wait_with_output().expect("restore output")
}

fn dry_run_is_the_restore_input(fl: Flavor) {
    let ns = Netns::new(&format!("id{}", &fl.0[..1]));
    let cfg = example("02-web-and-http3.yaml");
    let dry = fl.lowport_ok(&ns, &["-c", &cfg, "rules", "apply", "--dry-run"]);
    assert!(dry.contains("*nat") && dry.contains("COMMIT"), "{dry}");
    assert_eq!(
        fl.lowport_lines(&ns),
        Vec::<String>::new(),
        "dry run changed something"
    );

    // Each family's part, fed to its restore tool, installs what apply does.
    let fresh = Netns::new(&format!("ie{}", &fl.0[..1]));
    let mut parts: Vec<(&str, String)> = Vec::new();
    for line in dry.lines() {
        if line.starts_with("# ipv4:") {
            parts.push(("4", String::new()));
        } else if line.starts_with("# ipv6:") {
            parts.push(("6", String::new()));
        } else if line.starts_with('#') {
            continue;
        }
        if let Some((_, body)) = parts.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    assert_eq!(parts.len(), 2, "{dry}");
    for (family, body) in &parts {
        let out = restore(&fresh, &fl.tool(family, "restore"), body);
        assert!(
            out.status.success(),
            "{}\n{body}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fl.lowport_ok(&ns, &["-c", &cfg, "rules", "apply"]);
    assert_eq!(fl.lowport_lines(&fresh), fl.lowport_lines(&ns));
    // And lowport reads what the dry run installed as its own rules.
    let show = fl.lowport_ok(&fresh, &["rules", "show"]);
    assert!(show.contains("https"), "{show}");
}

/// A rule someone added to lowport's chain is reported, not silently
/// decoded; apply replaces it.
fn foreign_rule_is_reported_and_replaced(fl: Flavor) {
    let ns = Netns::new(&format!("io{}", &fl.0[..1]));
    fl.lowport_ok(&ns, &["-m", "80:8080", "rules", "apply"]);
    ns.ok(
        &fl.tool("4", ""),
        &[
            "-t",
            "nat",
            "-A",
            "LOWPORT-PREROUTING",
            "-s",
            "10.0.0.0/8",
            "-j",
            "RETURN",
        ],
    );
    let out = fl.lowport(&ns, &["rules", "show"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not write") && err.contains("10.0.0.0/8"),
        "{err}"
    );
    fl.lowport_ok(&ns, &["-m", "80:8080", "rules", "apply"]);
    fl.lowport_ok(&ns, &["rules", "show"]);
}

/// Apply the mapping `spec` with `fl`'s iptables backend inside the host,
/// with the restore input for `family` made invalid.
fn apply_rejected(
    lan: &Lan,
    fl: Flavor,
    spec: &str,
    family: lowport::firewall::plan::Family,
) -> Result<(), lowport::firewall::FirewallError> {
    use lowport::firewall::iptables::{Iptables, IptablesFlavor};
    use lowport::firewall::{plan, Backend, SystemHost};
    let mapping = lowport::config::parse_spec(spec, 0).expect("spec");
    let new = plan::plan(&[mapping], &SystemHost).expect("plan").rules;
    let flavor = if fl.0 == "nft" {
        IptablesFlavor::Nft
    } else {
        IptablesFlavor::Legacy
    };
    lan.host.enter(move || {
        let mut backend = Iptables::new(flavor);
        match family {
            plan::Family::V4 => backend.reject_next_restore_for_tests(),
            plan::Family::V6 => backend.reject_next_ipv6_restore_for_tests(),
        }
        backend.apply(&new)
    })
}

/// Install 80:8080, then apply 80:9090 with the restore for `family`
/// rejected: apply says so, lowport's rules are exactly as before, and they
/// still serve IPv4 and local clients.
fn rejection_keeps_the_old_rules(
    fl: Flavor,
    family: lowport::firewall::plan::Family,
    name: &str,
) -> Lan {
    use lowport::firewall::FirewallError;
    let mut lan = Lan::new(name);
    lan.host.start_backend("[::]:8080");
    lan.host.start_backend("[::]:9090");
    fl.lowport_ok(&lan.host, &["-m", "80:8080", "rules", "apply"]);
    let before = fl.lowport_lines(&lan.host);
    assert!(before.iter().any(|l| l.starts_with("6/")), "{before:?}");

    let result = apply_rejected(&lan, fl, "80:9090", family);
    assert!(
        matches!(result, Err(FirewallError::BatchRejected(_))),
        "{result:?}"
    );
    assert_eq!(
        fl.lowport_lines(&lan.host),
        before,
        "the rejected {family} restore left changed rules"
    );
    fl.lowport_ok(&lan.host, &["rules", "show"]);
    assert_reaches(
        &lan.remote,
        &format!("{}:80", Lan::HOST_V4),
        8080,
        Some(Lan::REMOTE_V4),
    );
    assert_reaches(&lan.host, "127.0.0.1:80", 8080, None);
    lan
}

/// A restore the kernel (iptables-restore) rejects leaves the previous
/// rules in place and serving.
fn rejected_restore_leaves_the_old_rules_serving(fl: Flavor) {
    rejection_keeps_the_old_rules(fl, lowport::firewall::plan::Family::V4, "irej");
}

/// IPv4 and IPv6 are separate restores (and each table its own COMMIT):
/// when the IPv6 one is rejected after the IPv4 one went through, the IPv4
/// rules are put back as they were, and the old rules serve both families.
fn rejected_ipv6_restore_rolls_back_ipv4(fl: Flavor) {
    use lowport::firewall::plan::Family;
    let lan = rejection_keeps_the_old_rules(fl, Family::V6, "irb6");
    assert_reaches(
        &lan.remote,
        &format!("[{}]:80", Lan::HOST_V6),
        8080,
        Some(Lan::REMOTE_V6),
    );

    // From nothing: a rejected IPv6 restore leaves no IPv4 rules behind.
    fl.lowport_ok(&lan.host, &["rules", "remove"]);
    let result = apply_rejected(&lan, fl, "80:9090", Family::V6);
    assert!(result.is_err(), "{result:?}");
    assert_eq!(fl.lowport_lines(&lan.host), Vec::<String>::new());
}

macro_rules! both_flavors {
    ($($test:ident),* $(,)?) => {
        mod nft {
            $(
                #[test]
                fn $test() {
                    if !super::require_root(concat!("nft::", stringify!($test))) {
                        return;
                    }
                    super::$test(super::FLAVORS[0]);
                }
            )*
        }
        mod legacy {
            $(
                #[test]
                fn $test() {
                    if !super::require_root(concat!("legacy::", stringify!($test))) {
                        return;
                    }
                    super::$test(super::FLAVORS[1]);
                }
            )*
        }
    };
}

both_flavors!(
    redirect_serves_remote_and_local_clients,
    hosts_own_outgoing_port_80_is_not_hijacked,
    loopback_only_backend_is_reachable_but_guarded,
    udp_is_mapped_over_v4_and_v6,
    reapply_identical_remove_idempotent_others_untouched,
    remote_target_forwards_and_masquerades,
    dry_run_is_the_restore_input,
    foreign_rule_is_reported_and_replaced,
    rejected_restore_leaves_the_old_rules_serving,
    rejected_ipv6_restore_rolls_back_ipv4,
);

/// `--backend auto` joins legacy iptables when legacy NAT rules are in
/// use, says why at -v, and otherwise picks nftables.
#[test]
fn auto_prefers_legacy_iptables_when_legacy_nat_rules_are_in_use() {
    if !require_root("auto_prefers_legacy_iptables_when_legacy_nat_rules_are_in_use") {
        return;
    }
    let ns = Netns::new("iauto");
    let dry = |ns: &Netns| {
        ns.command(lowport_bin())
            .args(["-v", "-m", "80:8080", "rules", "apply", "--dry-run"])
            .env_remove("LOWPORT_IPTABLES")
            .output()
            .expect("run lowport")
    };
    let out = dry(&ns);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("backend auto") && err.contains("nftables"),
        "{err}"
    );

    ns.ok(
        "iptables-legacy",
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "2222",
            "-j",
            "REDIRECT",
            "--to-ports",
            "22",
        ],
    );
    let out = dry(&ns);
    let err = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("legacy iptables NAT rules are in use"),
        "{err}"
    );
    assert!(text.contains("iptables-legacy-restore"), "{text}");
}

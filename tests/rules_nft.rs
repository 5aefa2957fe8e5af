//! `lowport rules` with the nftables backend, end to end: the real binary,
//! run inside namespaces this test makes, real traffic from a remote host
//! (the other end of a veth pair) and from the host itself, to a backend
//! that runs as nobody.

mod common;
use common::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("rules/examples")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn redirect_serves_remote_and_local_clients_over_v4_and_v6() {
    if !require_root("redirect_serves_remote_and_local_clients_over_v4_and_v6") {
        return;
    }
    let mut lan = Lan::new("redir");
    lan.host.start_backend("[::]:8080");
    // Nothing is mapped yet: port 80 is closed.
    assert!(lan
        .remote
        .tcp_banner(&format!("{}:80", Lan::HOST_V4))
        .is_err());

    let out = lan
        .host
        .lowport_ok(&["-c", &example("01-web.yaml"), "rules", "apply"]);
    assert!(out.contains("installed"), "{out}");

    assert_reaches(
        &lan.remote,
        &format!("{}:80", Lan::HOST_V4),
        8080,
        Some(Lan::REMOTE_V4),
    );
    assert_reaches(
        &lan.remote,
        &format!("[{}]:80", Lan::HOST_V6),
        8080,
        Some(Lan::REMOTE_V6),
    );
    assert_reaches(&lan.host, "127.0.0.1:80", 8080, None);
    assert_reaches(&lan.host, "[::1]:80", 8080, None);
    assert_reaches(&lan.host, &format!("{}:80", Lan::HOST_V4), 8080, None);
    assert_reaches(&lan.host, &format!("[{}]:80", Lan::HOST_V6), 8080, None);

    // show reads the kernel: the mapping comes back with its name.
    let show = lan.host.lowport_ok(&["rules", "show"]);
    assert!(
        show.contains("web") && show.contains("*:80") && show.contains("this host:8080"),
        "{show}"
    );
    assert!(show.contains("remote+local"), "{show}");

    lan.host.lowport_ok(&["rules", "remove"]);
    assert!(lan.host.nft_table().is_none());
    assert!(lan
        .remote
        .tcp_banner(&format!("{}:80", Lan::HOST_V4))
        .is_err());
    let show = lan.host.lowport_ok(&["rules", "show"]);
    assert!(show.contains("no rules installed"), "{show}");
}

#[test]
fn hosts_own_outgoing_port_80_is_not_hijacked() {
    if !require_root("hosts_own_outgoing_port_80_is_not_hijacked") {
        return;
    }
    let mut lan = Lan::new("hij");
    lan.host.start_backend("[::]:8080");
    // The remote runs its own web server on port 80.
    lan.remote
        .ok("sysctl", &["-qw", "net.ipv4.ip_unprivileged_port_start=0"]);
    lan.remote.start_backend("[::]:80");
    lan.host.lowport_ok(&["-m", "80:8080", "rules", "apply"]);

    for addr in [
        format!("{}:80", Lan::REMOTE_V4),
        format!("[{}]:80", Lan::REMOTE_V6),
    ] {
        let banner = lan.host.tcp_banner(&addr).expect("host reaches remote:80");
        // The remote's server says ":80 peer"; the host's backend would say ":8080 peer".
        assert!(
            banner.contains(":80 peer "),
            "the host's own connection to {addr} was redirected: {banner}"
        );
    }
    // ...while the host's own port 80 is mapped.
    assert_reaches(&lan.host, "127.0.0.1:80", 8080, None);
}

#[test]
fn loopback_only_backend_is_reachable_but_guarded() {
    if !require_root("loopback_only_backend_is_reachable_but_guarded") {
        return;
    }
    let mut lan = Lan::new("lo");
    lan.host.start_backend("127.0.0.1:8080");
    let before = lan.host.sysctl("net.ipv4.conf.all.route_localnet");
    assert_eq!(before, "0");

    let out = lan
        .host
        .lowport(&["-c", &example("04-loopback-backend.yaml"), "rules", "apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ipv6 clients are not mapped"), "{stderr}");
    // The note on the guard and `rules watch`: no run of spaces left by a
    // broken string continuation.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("guard keeps the LAN from reaching 127.0.0.1"),
        "{stdout}"
    );
    assert!(!stdout.contains("  "), "{stdout}");
    assert_eq!(lan.host.sysctl("net.ipv4.conf.all.route_localnet"), "1");

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
    // Control: without the guard the same attempt gets through, so the
    // check above really tests the guard.
    lan.host
        .ok("nft", &["flush", "chain", "inet", "lowport", "guard"]);
    assert!(
        attempt().is_ok(),
        "the neighbour setup cannot reach 127.0.0.1 even unguarded"
    );

    lan.host.lowport_ok(&["rules", "remove"]);
    assert_eq!(lan.host.sysctl("net.ipv4.conf.all.route_localnet"), before);
}

#[test]
fn udp_mapping_and_retarget_forgets_old_flows() {
    if !require_root("udp_mapping_and_retarget_forgets_old_flows") {
        return;
    }
    let mut lan = Lan::new("udp");
    lan.host.start_backend("[::]:8443");
    lan.host.start_backend("[::]:9443");
    lan.host
        .lowport_ok(&["-m", "443:8443/udp", "rules", "apply"]);

    let target: SocketAddr = format!("{}:443", Lan::HOST_V4).parse().unwrap();
    // One client socket (one flow) across the re-apply.
    let sock = lan.remote.enter(move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    });
    let ask = |s: &std::net::UdpSocket| {
        s.send_to(b"hi\n", target).unwrap();
        let mut buf = [0u8; 256];
        let n = retry_eintr(|| s.recv(&mut buf)).expect("udp answer");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(ask(&sock).contains(":8443 peer"), "first flow");
    assert!(lan.udp_v6_banner().contains(":8443 peer"));

    let out = lan
        .host
        .lowport_ok(&["-m", "443:9443/udp", "rules", "apply"]);
    assert!(
        out.contains("deleted"),
        "retarget should delete old UDP flows: {out}"
    );
    assert!(
        ask(&sock).contains(":9443 peer"),
        "the old flow still went to the old target"
    );

    lan.host.lowport_ok(&["rules", "remove"]);
    let ct = lan
        .host
        .ok("conntrack", &["-L", "-p", "udp", "--orig-port-dst", "443"]);
    assert!(!ct.contains("dport=443"), "flows left after remove: {ct}");
}

trait UdpV6 {
    fn udp_v6_banner(&self) -> String;
}
impl UdpV6 for Lan {
    fn udp_v6_banner(&self) -> String {
        self.remote
            .udp_banner(&format!("[{}]:443", Lan::HOST_V6))
            .expect("udp over ipv6")
    }
}

#[test]
fn reapply_is_identical_remove_is_idempotent_other_tables_untouched() {
    if !require_root("reapply_is_identical_remove_is_idempotent_other_tables_untouched") {
        return;
    }
    let ns = Netns::new("idem");
    ns.ok("nft", &["add table ip other"]);
    ns.ok(
        "nft",
        &["add chain ip other c { type filter hook input priority 0; }"],
    );
    ns.ok("nft", &["add rule ip other c tcp dport 22 counter accept"]);
    let other_before = ns.ok("nft", &["list", "table", "ip", "other"]);

    // Removing when nothing is installed succeeds.
    ns.lowport_ok(&["rules", "remove"]);
    let cfg = example("02-web-and-http3.yaml");
    ns.lowport_ok(&["-c", &cfg, "rules", "apply"]);
    let first = ns.nft_table().expect("table after apply");
    // Handles tell a replaced table from the same one.
    let handles = || ns.ok("nft", &["-a", "list", "table", "inet", "lowport"]);
    let first_handles = handles();
    ns.lowport_ok(&["-c", &cfg, "rules", "apply"]);
    assert_eq!(
        ns.nft_table().as_deref(),
        Some(first.as_str()),
        "re-apply changed the ruleset"
    );
    assert_eq!(
        handles(),
        first_handles,
        "re-applying the same rules replaced them instead of leaving them"
    );
    // A changed mapping replaces the table: handles move on.
    ns.lowport_ok(&["-m", "80:8081", "rules", "apply"]);
    assert_ne!(handles(), first_handles);
    assert!(ns.nft_table().expect("table").contains("redirect to :8081"));
    ns.lowport_ok(&["-c", &cfg, "rules", "apply"]);
    assert_eq!(ns.nft_table().as_deref(), Some(first.as_str()));
    ns.lowport_ok(&["rules", "remove"]);
    ns.lowport_ok(&["rules", "remove"]);
    assert!(ns.nft_table().is_none());
    assert_eq!(
        ns.ok("nft", &["list", "table", "ip", "other"]),
        other_before
    );
}

#[test]
fn remote_target_is_refused_while_forwarding_is_off() {
    if !require_root("remote_target_is_refused_while_forwarding_is_off") {
        return;
    }
    let ns = Netns::new("fwd");
    assert_eq!(ns.sysctl("net.ipv4.ip_forward"), "0");
    let out = ns.lowport(&["-m", "80:198.51.100.20:8080", "rules", "apply"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("net.ipv4.ip_forward"), "{stderr}");
    assert!(stderr.contains("enable_forwarding"), "{stderr}");
    assert!(
        ns.nft_table().is_none(),
        "a refused apply must change nothing"
    );

    // Allowed by the config: lowport turns it on, and off again on remove.
    ns.lowport_ok(&["-c", &example("05-remote-target.yaml"), "rules", "apply"]);
    assert_eq!(ns.sysctl("net.ipv4.ip_forward"), "1");
    ns.lowport_ok(&["rules", "remove"]);
    assert_eq!(ns.sysctl("net.ipv4.ip_forward"), "0");
}

#[test]
fn remote_target_forwards_and_masquerades() {
    if !require_root("remote_target_forwards_and_masquerades") {
        return;
    }
    // client (remote) -> host:80 -> backend host 10.232.0.2:8080 on a second LAN.
    let lan = Lan::new("fw");
    let mut upstream = lan.add_upstream("fwu");
    // No route back to the client's LAN: only masquerade makes replies work.
    upstream.start_backend("0.0.0.0:8080");

    let yaml = tempfile("fw.yaml", "mappings:\n  - name: upstream\n    listen: 80\n    to: \"10.232.0.2:8080\"\nrules:\n  enable_forwarding: true\n");
    lan.host
        .lowport_ok(&["-c", yaml.to_str().unwrap(), "rules", "apply"]);
    let banner = lan
        .remote
        .tcp_banner(&format!("{}:80", Lan::HOST_V4))
        .expect("remote client reaches the upstream through the host");
    assert!(
        banner.starts_with("backend 10.232.0.2:8080 peer 10.232.0.1:"),
        "{banner}"
    );
    assert_reaches(&lan.host, "127.0.0.1:80", 8080, None);
    lan.host.lowport_ok(&["rules", "remove"]);
    drop(upstream);
}

fn tempfile(name: &str, text: &str) -> PathBuf {
    let dir = common::process_dir("lowport-test");
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A chain's priority as a number: nft 1.1 prints `priority dstnat - 5`
/// where 1.0 prints `priority -105` for the same kernel value, so listings
/// are compared with every `priority NAME [+-] N` turned into its number.
fn normalize_priorities(listing: &str) -> String {
    // nft(8), "standard priority names" for the ip/ip6/inet families.
    const NAMES: [(&str, i32); 6] = [
        ("raw", -300),
        ("mangle", -150),
        ("dstnat", -100),
        ("filter", 0),
        ("security", 50),
        ("srcnat", 100),
    ];
    let mut out = String::new();
    for line in listing.lines() {
        let normalized = line.split_once(" priority ").and_then(|(head, rest)| {
            let (expr, tail) = rest.split_once(';')?;
            let mut words = expr.split_whitespace();
            let first = words.next()?;
            let base = match NAMES.iter().find(|(n, _)| *n == first) {
                Some((_, v)) => *v,
                None => first.parse().ok()?,
            };
            let value = match (words.next(), words.next()) {
                (None, _) => base,
                (Some("+"), Some(n)) => base + n.parse::<i32>().ok()?,
                (Some("-"), Some(n)) => base - n.parse::<i32>().ok()?,
                _ => return None,
            };
            Some(format!("{head} priority {value};{tail}"))
        });
        out.push_str(normalized.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[test]
fn priorities_compare_as_numbers_whatever_nft_prints() {
    let old = "\t\ttype nat hook output priority -105; policy accept;\n";
    let new = "\t\ttype nat hook output priority dstnat - 5; policy accept;\n";
    assert_eq!(normalize_priorities(new), old);
    assert_eq!(normalize_priorities(old), old);
    assert_eq!(
        normalize_priorities("type nat hook postrouting priority srcnat + 5; policy accept;"),
        "type nat hook postrouting priority 105; policy accept;\n"
    );
    assert_ne!(
        normalize_priorities("type nat hook prerouting priority dstnat; policy accept;"),
        normalize_priorities(old)
    );
}

#[test]
fn golden_listings_match_the_kernel_for_every_example() {
    if !require_root("golden_listings_match_the_kernel_for_every_example") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var_os("LOWPORT_BLESS").is_some();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("rules/examples")).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let ns = Netns::new("gold");
        ns.lowport_ok(&["-c", path.to_str().unwrap(), "rules", "apply"]);
        let listing = ns.nft_table().expect("table");
        let golden = root.join("rules/golden").join(format!("{stem}.nft"));
        if bless {
            std::fs::write(&golden, &listing).unwrap();
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|e| panic!("{}: {e} (LOWPORT_BLESS=1 writes it)", golden.display()));
        assert_eq!(
            normalize_priorities(&listing),
            normalize_priorities(&expected),
            "kernel listing for {stem} differs from {}",
            golden.display()
        );

        // The dry run is a valid nft script that installs the same thing.
        let script = ns.lowport_ok(&["-c", path.to_str().unwrap(), "rules", "apply", "--dry-run"]);
        let file = tempfile(&format!("{stem}.nft"), &script);
        let fresh = Netns::new("dry");
        fresh.ok("nft", &["-c", "-f", file.to_str().unwrap()]);
        fresh.ok("nft", &["-f", file.to_str().unwrap()]);
        assert_eq!(
            fresh.nft_table().as_deref().map(normalize_priorities),
            Some(normalize_priorities(&expected)),
            "{stem}: dry-run script installs something else"
        );
        checked += 1;
    }
    assert!(checked >= 5);
}

#[test]
fn dry_run_changes_nothing() {
    if !require_root("dry_run_changes_nothing") {
        return;
    }
    let ns = Netns::new("dryrun");
    let script = ns.lowport_ok(&[
        "-c",
        &example("04-loopback-backend.yaml"),
        "rules",
        "apply",
        "--dry-run",
    ]);
    assert!(script.contains("table inet lowport"), "{script}");
    assert!(script.contains("route_localnet=1"), "{script}");
    assert!(ns.nft_table().is_none());
    assert_eq!(ns.sysctl("net.ipv4.conf.all.route_localnet"), "0");
}

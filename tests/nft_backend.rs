//! The nftables backend against a real kernel: each test makes its own
//! network namespace(s), calls the backend in-process from a thread inside
//! one, and compares with what `nft` itself does. The host's own ruleset is
//! never touched.

mod common;
use common::*;

use std::io::Write;
use std::net::IpAddr;
use std::process::Stdio;

use lowport::firewall::conntrack;
use lowport::firewall::nft::Nftables;
use lowport::firewall::plan::{Family, Hook, MasqRule, NatAction, NatRule, RuleSet};
use lowport::firewall::{Backend, FirewallError};
use lowport::mapping::L4;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn nat(
    hook: Hook,
    family: Option<Family>,
    daddr: Option<&str>,
    l4: L4,
    dport: u16,
    action: NatAction,
    comment: &str,
) -> NatRule {
    NatRule {
        hook,
        family,
        daddr: daddr.map(ip),
        l4,
        dport,
        action,
        comment: comment.into(),
    }
}

/// Every shape the backend writes: redirects for both families and each
/// one, v4 and v6 destination matches, dnat v4 and v6, output (fib) rules,
/// UDP, masquerade for both families and the loopback guard.
fn every_shape() -> RuleSet {
    let redirect = NatAction::Redirect { port: 8080 };
    let dnat4 = NatAction::Dnat {
        addr: ip("127.0.0.1"),
        port: 8080,
    };
    let dnat6 = NatAction::Dnat {
        addr: ip("fd00::5"),
        port: 8443,
    };
    let mut rules = Vec::new();
    for hook in [Hook::Prerouting, Hook::Output] {
        use Family::*;
        rules.extend([
            nat(hook, None, None, L4::Tcp, 80, redirect, "web"),
            nat(hook, None, None, L4::Udp, 443, redirect, "h3"),
            nat(hook, Some(V4), None, L4::Tcp, 81, redirect, "v4-only"),
            nat(hook, Some(V6), None, L4::Tcp, 81, redirect, "v6-only"),
            nat(
                hook,
                Some(V4),
                Some("10.9.0.1"),
                L4::Tcp,
                82,
                redirect,
                "addr4",
            ),
            nat(
                hook,
                Some(V6),
                Some("fd00::1"),
                L4::Udp,
                82,
                redirect,
                "addr6",
            ),
            nat(hook, Some(V4), None, L4::Tcp, 83, dnat4, "loop4"),
            nat(hook, Some(V6), None, L4::Udp, 443, dnat6, "far6"),
            nat(
                hook,
                Some(V4),
                Some("10.9.0.1"),
                L4::Tcp,
                84,
                dnat4,
                "addr-dnat",
            ),
        ]);
    }
    RuleSet {
        nat: rules,
        masquerade: vec![
            MasqRule {
                daddr: ip("10.9.0.5"),
                l4: L4::Tcp,
                dport: 8080,
                comment: "far4".into(),
            },
            MasqRule {
                daddr: ip("fd00::5"),
                l4: L4::Udp,
                dport: 8443,
                comment: "far6".into(),
            },
        ],
        loopback_guard: true,
    }
}

/// Plain `80 -> 8080` for both families, remote and local clients.
fn web(proto: L4, from: u16, to: u16) -> RuleSet {
    let redirect = NatAction::Redirect { port: to };
    RuleSet {
        nat: vec![
            nat(Hook::Prerouting, None, None, proto, from, redirect, "web"),
            nat(Hook::Output, None, None, proto, from, redirect, "web"),
        ],
        ..RuleSet::default()
    }
}

/// Run a backend call on a thread inside `ns`.
fn with_nft<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce(&mut Nftables) -> T + Send + 'static,
) -> T {
    ns.enter(move || f(&mut Nftables::new()))
}

fn apply(ns: &Netns, rules: &RuleSet) {
    let rules = rules.clone();
    with_nft(ns, move |b| b.apply(&rules)).expect("apply");
}

fn list(ns: &Netns) -> Option<RuleSet> {
    with_nft(ns, |b| b.list()).expect("list")
}

/// `nft -f -` inside `ns` with `script` on stdin; returns the output.
fn nft_stdin(ns: &Netns, args: &[&str], script: &str) -> std::process::Output {
    let mut child = ns
        .command("nft")
        .args(args)
        .arg("-f")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write script");
    child.wait_with_output().expect("nft output")
}

fn nft_debug_listing(ns: &Netns) -> String {
    ns.ok(
        "nft",
        &["--debug=netlink", "list", "table", "inet", "lowport"],
    )
}

#[test]
fn apply_then_list_round_trips_every_shape() {
    if !require_root("apply_then_list_round_trips_every_shape") {
        return;
    }
    let ns = Netns::new("nftrt");
    assert_eq!(list(&ns), None, "no table yet");
    let rules = every_shape();
    apply(&ns, &rules);
    assert_eq!(list(&ns), Some(rules));

    // The empty set is a table with no chains, and reads back as such.
    apply(&ns, &RuleSet::default());
    assert_eq!(list(&ns), Some(RuleSet::default()));
    let listing = ns.nft_table().expect("table");
    assert!(!listing.contains("chain"), "{listing}");
}

#[test]
fn netlink_rules_are_exactly_what_nft_makes_of_render() {
    if !require_root("netlink_rules_are_exactly_what_nft_makes_of_render") {
        return;
    }
    let rules = every_shape();
    let by_netlink = Netns::new("nftnl");
    apply(&by_netlink, &rules);

    let by_nft = Netns::new("nftf");
    let script = Nftables::new().render(&rules);
    let out = nft_stdin(&by_nft, &[], &script);
    assert!(
        out.status.success(),
        "nft -f of render() failed:\n{}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Same text listing, and the same expressions down to the byte (the
    // debug listing prints the kernel's own dump of every expression).
    assert_eq!(by_netlink.nft_table(), by_nft.nft_table());
    let debug = nft_debug_listing(&by_netlink);
    for expr in [
        "[ fib daddr type => reg 1 ]",
        "[ redir ",
        "[ nat dnat ip6 ",
        "[ masq ]",
        "drop ]",
    ] {
        assert!(debug.contains(expr), "{expr} missing from:\n{debug}");
    }
    assert_eq!(debug, nft_debug_listing(&by_nft));
    // And what nft installed decodes as the same rule set.
    assert_eq!(list(&by_nft), Some(rules));
}

#[test]
fn render_passes_nft_check() {
    if !require_root("render_passes_nft_check") {
        return;
    }
    let ns = Netns::new("nftck");
    for rules in [every_shape(), web(L4::Tcp, 80, 8080), RuleSet::default()] {
        let script = Nftables::new().render(&rules);
        let out = nft_stdin(&ns, &["-c"], &script);
        assert!(
            out.status.success(),
            "nft -c rejected:\n{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(ns.nft_table(), None, "nft -c changes nothing");
}

#[test]
fn reapply_gives_an_identical_listing() {
    if !require_root("reapply_gives_an_identical_listing") {
        return;
    }
    let ns = Netns::new("nftre");
    let rules = every_shape();
    apply(&ns, &rules);
    let first = ns.nft_table().expect("table");
    apply(&ns, &rules);
    assert_eq!(ns.nft_table().expect("table"), first);
    assert_eq!(list(&ns), Some(rules));
}

#[test]
fn remove_is_idempotent() {
    if !require_root("remove_is_idempotent") {
        return;
    }
    let ns = Netns::new("nftrm");
    with_nft(&ns, |b| b.remove()).expect("remove with nothing installed");
    apply(&ns, &every_shape());
    with_nft(&ns, |b| b.remove()).expect("remove");
    assert_eq!(ns.nft_table(), None);
    with_nft(&ns, |b| b.remove()).expect("remove twice");
    assert_eq!(list(&ns), None);
}

#[test]
fn other_tables_survive_apply_and_remove() {
    if !require_root("other_tables_survive_apply_and_remove") {
        return;
    }
    let ns = Netns::new("nftot");
    ns.ok("nft", &["add", "table", "ip", "other"]);
    ns.ok(
        "nft",
        &["add chain ip other input { type filter hook input priority 0; policy accept; }"],
    );
    ns.ok(
        "nft",
        &["add rule ip other input tcp dport 22 accept comment \"ssh\""],
    );
    let before = ns.ok("nft", &["list", "table", "ip", "other"]);

    apply(&ns, &every_shape());
    assert_eq!(ns.ok("nft", &["list", "table", "ip", "other"]), before);
    with_nft(&ns, |b| b.remove()).expect("remove");
    assert_eq!(ns.ok("nft", &["list", "table", "ip", "other"]), before);
}

#[test]
fn rejected_batch_leaves_the_old_rules_serving() {
    if !require_root("rejected_batch_leaves_the_old_rules_serving") {
        return;
    }
    let ns = Netns::new("nftrj");
    let old = web(L4::Tcp, 80, 8080);
    apply(&ns, &old);
    let listing = ns.nft_table().expect("table");

    let new = every_shape();
    let err = with_nft(&ns, move |b| {
        b.reject_next_batch_for_tests();
        b.apply(&new)
    })
    .expect_err("the kernel must reject the batch");
    match &err {
        FirewallError::BatchRejected(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}")
        }
        other => panic!("expected BatchRejected, got {other:?}"),
    }
    assert_eq!(ns.nft_table().expect("table"), listing);
    assert_eq!(list(&ns), Some(old));

    // The same without a table at all: nothing appears.
    let fresh = Netns::new("nftrj2");
    let new = every_shape();
    let err = with_nft(&fresh, move |b| {
        b.reject_next_batch_for_tests();
        b.apply(&new)
    });
    assert!(
        matches!(err, Err(FirewallError::BatchRejected(_))),
        "{err:?}"
    );
    assert_eq!(fresh.nft_table(), None);
}

#[test]
fn a_first_install_creates_the_table_and_survives_a_race() {
    if !require_root("a_first_install_creates_the_table_and_survives_a_race") {
        return;
    }
    // Reference: the add/delete/add replace, as an apply without a prior list does.
    let reference = Netns::new("nftcr0");
    apply(&reference, &every_shape());
    let want = reference.nft_table().expect("table");

    // list() saw no table: apply creates it (no delete in the batch), and
    // the kernel holds exactly what the replace would have made.
    let ns = Netns::new("nftcr1");
    let rules = every_shape();
    let seen = with_nft(&ns, move |b| {
        let seen = b.list().expect("list");
        b.apply(&rules).expect("create");
        seen
    });
    assert_eq!(seen, None);
    assert_eq!(ns.nft_table().as_deref(), Some(want.as_str()));

    // Someone makes the table between lowport's look and its batch: the
    // exclusive create is refused and the table is replaced instead.
    let raced = Netns::new("nftcr2");
    let rules = every_shape();
    let result = with_nft(&raced, move |b| {
        let seen = b.list().expect("list");
        let out = std::process::Command::new("nft")
            .args(["add table inet lowport; add chain inet lowport foreign"])
            .output()
            .expect("run nft");
        assert!(out.status.success(), "{out:?}");
        (seen, b.apply(&rules))
    });
    assert_eq!(result.0, None);
    result.1.expect("replace after the race");
    assert_eq!(raced.nft_table().as_deref(), Some(want.as_str()));

    // A create the kernel rejects leaves no table behind.
    let rejected = Netns::new("nftcr3");
    let rules = every_shape();
    let err = with_nft(&rejected, move |b| {
        assert_eq!(b.list().expect("list"), None);
        b.reject_next_batch_for_tests();
        b.apply(&rules)
    });
    match err {
        Err(FirewallError::BatchRejected(e)) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT)),
        other => panic!("expected BatchRejected, got {other:?}"),
    }
    assert_eq!(rejected.nft_table(), None);
}

#[test]
fn foreign_rules_and_chains_are_reported() {
    if !require_root("foreign_rules_and_chains_are_reported") {
        return;
    }
    let ns = Netns::new("nftfo");
    apply(&ns, &web(L4::Tcp, 80, 8080));
    ns.ok(
        "nft",
        &["add rule inet lowport prerouting tcp dport 81 counter redirect to :8081"],
    );
    let err = with_nft(&ns, |b| b.list()).expect_err("foreign rule");
    assert!(matches!(err, FirewallError::Foreign(_)), "{err:?}");
    assert!(err.to_string().contains("chain prerouting"), "{err}");

    apply(&ns, &web(L4::Tcp, 80, 8080));
    ns.ok("nft", &["add chain inet lowport extra"]);
    let err = with_nft(&ns, |b| b.list()).expect_err("foreign chain");
    assert!(err.to_string().contains("chain extra"), "{err}");

    // apply replaces the whole table, foreign parts included.
    apply(&ns, &web(L4::Tcp, 80, 8080));
    assert_eq!(list(&ns), Some(web(L4::Tcp, 80, 8080)));
}

#[test]
fn redirect_serves_remote_and_local_clients() {
    if !require_root("redirect_serves_remote_and_local_clients") {
        return;
    }
    let mut lan = Lan::new("nfttr");
    lan.host.start_backend("[::]:8080");
    let v4 = format!("{}:80", Lan::HOST_V4);
    let v6 = format!("[{}]:80", Lan::HOST_V6);
    assert!(lan.remote.tcp_banner(&v4).is_err(), "nothing mapped yet");

    apply(&lan.host, &web(L4::Tcp, 80, 8080));
    assert_reaches(&lan.remote, &v4, 8080, None);
    assert_reaches(&lan.remote, &v6, 8080, None);
    for local in ["127.0.0.1:80", "[::1]:80", v4.as_str(), v6.as_str()] {
        assert_reaches(&lan.host, local, 8080, None);
    }

    // The host's own connections to port 80 elsewhere are not hijacked:
    // the remote runs its own server on 80 and the host reaches it.
    lan.remote
        .ok("sysctl", &["-w", "net.ipv4.ip_unprivileged_port_start=0"]);
    lan.remote.start_backend("[::]:80");
    assert_reaches(&lan.host, &format!("{}:80", Lan::REMOTE_V4), 80, None);
    assert_reaches(&lan.host, &format!("[{}]:80", Lan::REMOTE_V6), 80, None);

    with_nft(&lan.host, |b| b.remove()).expect("remove");
    assert!(lan.remote.tcp_banner(&v4).is_err(), "closed again");
}

fn udp_flows(ns: &Netns, port: u16) -> usize {
    let out = ns.run(
        "conntrack",
        &["-L", "-p", "udp", "--orig-port-dst", &port.to_string()],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("udp"))
        .count()
}

#[test]
fn udp_flows_through_a_redirect_are_deleted() {
    if !require_root("udp_flows_through_a_redirect_are_deleted") {
        return;
    }
    let mut lan = Lan::new("nftct");
    lan.host.start_backend("[::]:8443");
    apply(&lan.host, &web(L4::Udp, 443, 8443));

    let banner = lan
        .remote
        .udp_banner(&format!("{}:443", Lan::HOST_V4))
        .expect("udp through the redirect");
    assert!(banner.contains(":8443 peer "), "{banner}");
    lan.remote
        .udp_banner(&format!("[{}]:443", Lan::HOST_V6))
        .expect("udp v6 through the redirect");
    // A flow straight to the backend port is not NATed: it must stay.
    lan.remote
        .udp_banner(&format!("{}:8443", Lan::HOST_V4))
        .expect("udp straight to the backend");
    assert_eq!(udp_flows(&lan.host, 443), 2, "one flow per family");
    assert_eq!(udp_flows(&lan.host, 8443), 1);

    // Family filter: only the IPv6 flow goes first.
    let n = lan
        .host
        .enter(|| conntrack::delete_udp_flows(443, Some(Family::V6)))
        .expect("delete v6");
    assert_eq!(n, 1);
    assert_eq!(udp_flows(&lan.host, 443), 1);

    let n = lan
        .host
        .enter(|| conntrack::delete_udp_flows(443, None))
        .expect("delete");
    assert_eq!(n, 1);
    assert_eq!(udp_flows(&lan.host, 443), 0);
    // Not NATed: untouched, even when asked about its port.
    let n = lan
        .host
        .enter(|| conntrack::delete_udp_flows(8443, None))
        .expect("delete none");
    assert_eq!(n, 0);
    assert_eq!(udp_flows(&lan.host, 8443), 1);
    // Nothing left to delete is not an error.
    let n = lan
        .host
        .enter(|| conntrack::delete_udp_flows(443, None))
        .expect("delete again");
    assert_eq!(n, 0);
}

#[test]
fn a_large_rule_set_goes_in_one_batch_and_reads_back() {
    if !require_root("a_large_rule_set_goes_in_one_batch_and_reads_back") {
        return;
    }
    // Well over one libnftnl batch page (128 KiB) and the default socket
    // buffers: the batch must still go as one datagram, every ack must be
    // collected, and the dump must span several reads.
    let ns = Netns::new("nftbig");
    let mut rules = RuleSet::default();
    for hook in [Hook::Prerouting, Hook::Output] {
        for port in 1000..2500u16 {
            let action = NatAction::Redirect { port: port + 10000 };
            rules.nat.push(nat(
                hook,
                None,
                None,
                L4::Tcp,
                port,
                action,
                &format!("m{port}"),
            ));
        }
    }
    let started = std::time::Instant::now();
    apply(&ns, &rules);
    assert_eq!(list(&ns), Some(rules));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

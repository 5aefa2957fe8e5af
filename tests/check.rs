//! `lowport check` on hosts (namespaces) built to be healthy or broken in
//! one way each: every case shows the finding it must produce and the exit
//! code, and where check prints a fix, the test applies it and sends real
//! traffic to prove the fix works.
//!
//! Rules are installed with the iptables backend (iptables-nft), so these
//! tests do not depend on which backend `auto` picks.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Output;

const CONFIG: &str =
    "mappings:\n  - name: web\n    listen: 80\n    to: 8080\nrules:\n  backend: iptables\n";

fn config_file(tag: &str, text: &str) -> PathBuf {
    let dir = common::process_dir("lowport-check-test");
    let p = dir.join(format!("{tag}.yaml"));
    std::fs::write(&p, text).expect("config file");
    p
}

fn lowport(ns: &Netns, bin: &Path, args: &[&str]) -> Output {
    ns.command(bin)
        .env("LOWPORT_IPTABLES", "nft")
        .args(args)
        .output()
        .expect("run lowport")
}

/// `lowport -c FILE check [--json]`: (exit code, stdout).
fn check(ns: &Netns, cfg: &Path, json: bool) -> (i32, String) {
    let mut args = vec!["-c", cfg.to_str().expect("utf-8 path"), "check"];
    if json {
        args.push("--json");
    }
    let out = lowport(ns, &lowport_bin(), &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn apply(ns: &Netns, cfg: &Path) {
    let out = lowport(
        ns,
        &lowport_bin(),
        &["-c", cfg.to_str().expect("path"), "rules", "apply"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn problems(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.starts_with("✗")).collect()
}

#[test]
fn healthy_host_passes() {
    if !require_root("healthy_host_passes") {
        return;
    }
    let mut lan = Lan::new("ckok");
    lan.host.start_backend("0.0.0.0:8080");
    let cfg = config_file("ok", CONFIG);
    apply(&lan.host, &cfg);
    assert!(lan
        .remote
        .tcp_banner(&format!("{}:80", Lan::HOST_V4))
        .is_ok());

    let (code, text) = check(&lan.host, &cfg, false);
    assert_eq!(code, 0, "{text}");
    assert!(problems(&text).is_empty(), "{text}");
    assert!(
        text.contains("✓ target: web: tcp 0.0.0.0:8080 ← backend"),
        "{text}"
    );
    assert!(text.contains("as nobody"), "{text}");
    assert!(
        text.contains("✓ rules: lowport's rules are installed (iptables-nft"),
        "{text}"
    );
    assert!(text.contains("match the config"), "{text}");
    assert!(text.contains("→ simplest here: keep rules mode"), "{text}");

    let (code, json) = check(&lan.host, &cfg, true);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).expect("check --json is JSON");
    assert_eq!(v["ok"], true);
    assert_eq!(v["mode"], "rules");
    assert!(
        v["findings"].as_array().is_some_and(|f| f.len() >= 5),
        "{json}"
    );
}

#[test]
fn missing_backend_is_a_problem() {
    if !require_root("missing_backend_is_a_problem") {
        return;
    }
    let ns = Netns::new("cknob");
    let cfg = config_file("nob", CONFIG);
    apply(&ns, &cfg);
    let (code, text) = check(&ns, &cfg, false);
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        problems(&text),
        vec!["✗ target: web: nothing listens on tcp port 8080"],
        "{text}"
    );
    assert!(
        text.contains("fix: start the web server on tcp port 8080"),
        "{text}"
    );

    let (code, json) = check(&ns, &cfg, true);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["ok"], false);
    let bad: Vec<&serde_json::Value> = v["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["status"] == "problem")
        .collect();
    assert_eq!(bad.len(), 1, "{json}");
    assert_eq!(bad[0]["topic"], "target");
    assert!(bad[0]["fix"].is_string());
}

#[test]
fn loopback_only_backend_for_a_redirect_is_a_problem() {
    if !require_root("loopback_only_backend_for_a_redirect_is_a_problem") {
        return;
    }
    let mut ns = Netns::new("cklo");
    ns.start_backend("127.0.0.1:8080");
    let cfg = config_file("lo", CONFIG);
    apply(&ns, &cfg);
    let (code, text) = check(&ns, &cfg, false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("listens on loopback only"), "{text}");
    assert!(text.contains("to: \"127.0.0.1:8080\""), "{text}");
}

#[test]
fn blocking_input_policy_is_found_and_its_fix_works() {
    if !require_root("blocking_input_policy_is_found_and_its_fix_works") {
        return;
    }
    let mut lan = Lan::new("ckin");
    lan.host.start_backend("0.0.0.0:8080");
    let cfg = config_file("in", CONFIG);
    apply(&lan.host, &cfg);
    // A typical host firewall: drop by default, allow lo, replies and the
    // port the admin thinks of (80) — which the filter never sees.
    lan.host.ok(
        "nft",
        &["add table inet filter; \
           add chain inet filter input { type filter hook input priority 0; policy drop; }; \
           add rule inet filter input iifname \"lo\" accept; \
           add rule inet filter input ct state established,related accept; \
           add rule inet filter input tcp dport { 22, 80 } accept"],
    );
    let v4 = format!("{}:80", Lan::HOST_V4);
    assert!(
        lan.remote.tcp_banner(&v4).is_err(),
        "the firewall should block"
    );

    let (code, text) = check(&lan.host, &cfg, false);
    assert_eq!(code, 1, "{text}");
    let bad = problems(&text);
    assert_eq!(bad.len(), 1, "{text}");
    assert!(
        bad[0].starts_with("✗ input: web: chain inet filter input"),
        "{text}"
    );
    assert!(
        bad[0].contains("sees the translated port 8080, not 80"),
        "{text}"
    );
    let fix = text
        .lines()
        .skip_while(|l| !l.starts_with("✗ input"))
        .nth(1)
        .and_then(|l| l.trim().strip_prefix("fix: sudo "))
        .expect("a fix line")
        .to_owned();
    assert!(fix.contains("ct original proto-dst 80 accept"), "{fix}");

    // Apply the printed fix, as printed.
    let words: Vec<&str> = fix.split_whitespace().collect();
    lan.host.ok(words[0], &words[1..]);
    assert!(
        lan.remote.tcp_banner(&v4).is_ok(),
        "the fix did not let clients in"
    );
    let (code, text) = check(&lan.host, &cfg, false);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn conflicting_nat_table_is_found() {
    if !require_root("conflicting_nat_table_is_found") {
        return;
    }
    let mut ns = Netns::new("cknat");
    ns.start_backend("0.0.0.0:8080");
    let cfg = config_file("nat", CONFIG);
    apply(&ns, &cfg);

    // Runs after lowport (like firewalld at -90): only worth knowing.
    ns.ok(
        "nft",
        &["add table ip late; \
           add chain ip late pre { type nat hook prerouting priority -90; }; \
           add rule ip late pre tcp dport 80 dnat to 10.0.0.9:80"],
    );
    let (code, text) = check(&ns, &cfg, false);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("! nat: web: table ip late chain pre (priority -90)"),
        "{text}"
    );

    // Runs before lowport and claims port 80 (through a jump, as Docker's
    // chains do): lowport never sees those connections.
    ns.ok(
        "nft",
        &["add table ip early; \
           add chain ip early svc; \
           add rule ip early svc tcp dport 80 dnat to 10.0.0.9:80; \
           add chain ip early pre { type nat hook prerouting priority -110; }; \
           add rule ip early pre fib daddr type local jump svc"],
    );
    let (code, text) = check(&ns, &cfg, false);
    assert_eq!(code, 1, "{text}");
    let bad = problems(&text);
    assert_eq!(bad.len(), 1, "{text}");
    assert!(
        bad[0].contains("table ip early chain pre (priority -110)"),
        "{text}"
    );
    assert!(bad[0].contains("runs before lowport"), "{text}");
    assert!(
        text.contains("sudo nft delete rule ip early svc handle"),
        "{text}"
    );
    assert!(
        text.contains("→ simplest here: first remove the other NAT rule"),
        "{text}"
    );
}

#[test]
fn drift_and_missing_rules_are_problems() {
    if !require_root("drift_and_missing_rules_are_problems") {
        return;
    }
    let mut ns = Netns::new("ckdr");
    ns.start_backend("0.0.0.0:8080");
    let cfg = config_file("dr", CONFIG);
    let (code, text) = check(&ns, &cfg, false);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("✗ rules: lowport's rules are not installed"),
        "{text}"
    );
    // The fix names the file given with -c, ready to paste.
    let fix = format!("fix: sudo lowport -c {} rules apply", cfg.display());
    assert!(text.contains(&fix), "{text}");

    let other = config_file(
        "dr2",
        "mappings:\n  - name: web\n    listen: 80\n    to: 9090\nrules:\n  backend: iptables\n",
    );
    apply(&ns, &other);
    let (code, text) = check(&ns, &cfg, false);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("differ from what the config would install (drift)"),
        "{text}"
    );
}

#[test]
fn bad_config_exits_2() {
    if !require_root("bad_config_exits_2") {
        return;
    }
    let ns = Netns::new("ckbad");
    let cfg = config_file("bad", "mappings:\n  - listen: 80\n    to: 0\n");
    let (code, _) = check(&ns, &cfg, false);
    assert_eq!(code, 2);
    let cfg = config_file(
        "bad2",
        "mappings:\n  - listen: 80\n    to: 8080\n    colour: blue\n",
    );
    let (code, _) = check(&ns, &cfg, true);
    assert_eq!(code, 2);
}

#[test]
fn unprivileged_ports_mean_nothing_is_needed() {
    if !require_root("unprivileged_ports_mean_nothing_is_needed") {
        return;
    }
    let ns = Netns::new("ckup");
    ns.ok("sysctl", &["-qw", "net.ipv4.ip_unprivileged_port_start=0"]);
    let cfg = config_file("up", CONFIG);
    let (_, text) = check(&ns, &cfg, false);
    assert!(
        text.contains("ip_unprivileged_port_start=0 ≤ 80: any user may bind"),
        "{text}"
    );
    assert!(
        text.contains("→ simplest here: let the web server listen on 80 itself"),
        "{text}"
    );
}

#[test]
fn file_capability_is_read_from_the_binary() {
    if !require_root("file_capability_is_read_from_the_binary") {
        return;
    }
    let ns = Netns::new("ckcap");
    // A copy of the binary with the capability, outside any nosuid mount.
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let bin = dir.join("lowport");
    std::fs::copy(lowport_bin(), &bin).expect("copy binary");
    let cfg = config_file("cap", CONFIG);
    let args = ["-c", cfg.to_str().expect("path"), "check"];

    let text = String::from_utf8_lossy(&lowport(&ns, &bin, &args).stdout).into_owned();
    assert!(text.contains("carries no file capability"), "{text}");
    assert!(
        text.contains("fix: sudo setcap cap_net_bind_service=+ep"),
        "{text}"
    );

    sh(
        "setcap",
        &["cap_net_bind_service=+ep", bin.to_str().expect("path")],
    );
    let text = String::from_utf8_lossy(&lowport(&ns, &bin, &args).stdout).into_owned();
    assert!(text.contains("carries cap_net_bind_service=ep"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A binary on a `nosuid` mount gets no file capability from the kernel:
/// check says so. The mount is a tmpfs on /mnt in a private mount
/// namespace, gone with it.
#[test]
fn a_binary_on_a_nosuid_mount_is_a_warning() {
    if !require_root("a_binary_on_a_nosuid_mount_is_a_warning") {
        return;
    }
    let ns = Netns::new("cknosuid");
    let cfg = config_file("nosuid", CONFIG);
    let script = "set -e; mount -t tmpfs -o nosuid lowport-test /mnt; \
                  cp \"$1\" /mnt/lowport; exec /mnt/lowport -c \"$2\" check";
    let out = ns
        .command("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(lowport_bin())
        .arg(&cfg)
        .output()
        .expect("run unshare");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("mounted nosuid"))
        .unwrap_or_else(|| {
            panic!(
                "no nosuid finding:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(line.starts_with('!'), "{line}");
    assert!(line.contains("/mnt/lowport is on /mnt"), "{line}");

    // The same binary where it is, not on a nosuid mount: no such finding.
    let (_, text) = check(&ns, &cfg, false);
    assert!(!text.contains("mounted nosuid"), "{text}");
}

/// A check run with no_new_privs stands for a proxy started the same way:
/// it would get no file capability, and check says what works instead.
#[test]
fn no_new_privs_is_a_warning() {
    if !require_root("no_new_privs_is_a_warning") {
        return;
    }
    let ns = Netns::new("cknnp");
    let cfg = config_file("nnp", CONFIG);
    let out = ns
        .command("setpriv")
        .arg("--no-new-privs")
        .arg(lowport_bin())
        .args(["-c", cfg.to_str().expect("path"), "check"])
        .output()
        .expect("run setpriv");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("no_new_privs"))
        .unwrap_or_else(|| panic!("no no_new_privs finding:\n{text}"));
    assert!(line.starts_with('!'), "{line}");
    assert!(
        text.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"),
        "{text}"
    );

    let (_, text) = check(&ns, &cfg, false);
    assert!(!text.contains("runs with no_new_privs"), "{text}");
}

/// A running `lowport proxy` on a mapped port is found, and the mode is
/// proxy.
#[test]
fn a_running_proxy_is_reported() {
    if !require_root("a_running_proxy_is_reported") {
        return;
    }
    let mut ns = Netns::new("ckpx");
    let cfg = config_file("px", CONFIG);
    let proxy = ns
        .command(lowport_bin())
        .args(["-c", cfg.to_str().expect("path"), "proxy"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start lowport proxy");
    ns.adopt(proxy);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let (_, text) = check(&ns, &cfg, false);
        if text.contains("lowport proxy listens on") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy never showed up:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let line = text
        .lines()
        .find(|l| l.contains("lowport proxy listens on"))
        .expect("line");
    assert!(line.starts_with('✓'), "{line}");
    assert!(line.contains(":80 "), "{line}");
    assert!(line.contains("lowport (pid "), "{line}");
}

/// A remote target needs forwarding: off, and not allowed by the config,
/// check says how to turn it on; allowed, apply will; on, it is fine.
#[test]
fn forwarding_for_a_remote_target_is_checked() {
    if !require_root("forwarding_for_a_remote_target_is_checked") {
        return;
    }
    let ns = Netns::new("ckfwd");
    let remote = "mappings:\n  - name: web\n    listen: 80\n    to: 192.0.2.10:8080\nrules:\n  backend: iptables\n";
    let cfg = config_file("fwd", remote);
    ns.ok("sysctl", &["-qw", "net.ipv4.ip_forward=0"]);
    let (_, text) = check(&ns, &cfg, false);
    assert!(
        text.contains("ip_forward is off; it is needed to forward to a remote target, and the config does not let lowport turn it on"),
        "{text}"
    );
    assert!(text.contains("enable_forwarding: true"), "{text}");

    let allowed = config_file(
        "fwd-allowed",
        &remote.replace(
            "backend: iptables\n",
            "backend: iptables\n  enable_forwarding: true\n",
        ),
    );
    let (_, text) = check(&ns, &allowed, false);
    assert!(
        text.contains("ip_forward is off; it is needed to forward to a remote target"),
        "{text}"
    );
    assert!(
        text.contains("(sets it, and puts it back on remove)"),
        "{text}"
    );

    ns.ok("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    let (_, text) = check(&ns, &cfg, false);
    assert!(
        text.lines()
            .any(|l| l.starts_with('✓')
                && l.contains("ip_forward=1 (to forward to a remote target)")),
        "{text}"
    );
}

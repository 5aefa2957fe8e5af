//! The shipped systemd units are valid (systemd-analyze verify) and say
//! what the README promises: re-apply after an nftables reload, remove on
//! stop; the socket unit listens only where the shipped config maps.
//! tests/container.rs runs them under a real systemd.

use std::path::Path;
use std::process::Command;

fn unit_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/systemd")
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "systemd-analyze missing in CI"
        );
        eprintln!("SKIPPED units_pass_systemd_analyze_verify: systemd-analyze is missing");
        return;
    };
    assert!(probe.status.success());
    let tmp = std::env::temp_dir().join(format!("lowport-units-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let _remove = RemoveOnDrop(tmp.clone());
    let mut units = Vec::new();
    for entry in std::fs::read_dir(unit_dir()).unwrap() {
        let path = entry.unwrap().path();
        // verify checks that ExecStart's binary exists: point it at the one under test.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/bin/lowport", env!("CARGO_BIN_EXE_lowport"));
        let dest = tmp.join(path.file_name().unwrap());
        std::fs::write(&dest, text).unwrap();
        units.push(dest);
    }
    assert!(!units.is_empty());
    // `Documentation=man:lowport(1)` is checked by running man: offer it
    // the shipped page.
    let man1 = tmp.join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/man/lowport.1"),
        man1.join("lowport.1"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .env("MANPATH", tmp.join("man"))
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("lowport"),
        "systemd-analyze verify complains: {stderr}"
    );
}

#[test]
fn rules_unit_reapplies_after_firewall_reload_and_removes_on_stop() {
    let text = std::fs::read_to_string(unit_dir().join("lowport-rules.service")).unwrap();
    for needle in [
        "Type=oneshot",
        "RemainAfterExit=yes",
        "After=nftables.service",
        "PartOf=nftables.service",
        "ReloadPropagatedFrom=nftables.service",
        "ExecStart=/usr/bin/lowport -c /etc/lowport/lowport.yaml rules apply",
        "ExecReload=/usr/bin/lowport -c /etc/lowport/lowport.yaml rules apply",
        "ExecStopPost=/usr/bin/lowport -c /etc/lowport/lowport.yaml rules remove",
    ] {
        assert!(
            text.contains(needle),
            "lowport-rules.service lacks {needle}"
        );
    }
}

/// Ports of `ListenStream=` lines (`80`, `0.0.0.0:80`, `[::]:80`).
fn listen_stream_ports(unit: &str) -> Vec<u16> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("ListenStream="))
        .map(|v| {
            let port = v.rsplit(':').next().unwrap_or(v);
            port.parse()
                .unwrap_or_else(|_| panic!("ListenStream={v}: not a port"))
        })
        .collect()
}

/// lowport closes a passed socket no mapping uses, but systemd keeps
/// listening on it: clients of that port would hang, and one waiting
/// client starts a stopped service again. So the socket unit listens on
/// exactly the ports the shipped default config maps.
#[test]
fn socket_unit_listens_only_where_the_default_config_maps() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let socket = std::fs::read_to_string(unit_dir().join("lowport-proxy.socket")).unwrap();
    let mut socket_ports = listen_stream_ports(&socket);
    socket_ports.sort_unstable();
    let out = Command::new(env!("CARGO_BIN_EXE_lowport"))
        .args(["-c", root.join("dist/lowport.yaml").to_str().unwrap()])
        .args(["rules", "apply", "--dry-run"])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut mapped: Vec<u16> = script
        .lines()
        .filter(|l| l.contains("tcp dport"))
        .filter_map(|l| {
            l.split("tcp dport ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    mapped.sort_unstable();
    mapped.dedup();
    assert!(
        !mapped.is_empty(),
        "no TCP mapping in dist/lowport.yaml:\n{script}"
    );
    assert_eq!(
        socket_ports, mapped,
        "lowport-proxy.socket vs dist/lowport.yaml"
    );
}

/// `proxy` already logs at info level; a -v in the unit would log a DEBUG
/// line per connection.
#[test]
fn proxy_unit_logs_at_the_default_level() {
    let text = std::fs::read_to_string(unit_dir().join("lowport-proxy.service")).unwrap();
    let exec = text
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    assert_eq!(
        exec,
        "ExecStart=/usr/bin/lowport -c /etc/lowport/lowport.yaml proxy"
    );
}

/// iptables-legacy opens raw sockets ("unable to initialize table 'raw'"
/// without CAP_NET_RAW).
#[test]
fn rules_unit_may_run_iptables_legacy() {
    let text = std::fs::read_to_string(unit_dir().join("lowport-rules.service")).unwrap();
    let bounding = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet=");
    for cap in ["CAP_NET_ADMIN", "CAP_NET_RAW"] {
        assert!(bounding.split_whitespace().any(|c| c == cap), "{bounding}");
    }
}

/// Removes a directory when dropped, also when the test fails.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

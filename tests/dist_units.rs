//! The shipped systemd units are valid (systemd-analyze verify) and say
//! what the README promises: re-apply after an nftables reload, remove on
//! stop.

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
    let mut units = Vec::new();
    for entry in std::fs::read_dir(unit_dir()).unwrap() {
        let path = entry.unwrap().path();
        // verify checks that ExecStart's binary exists: point it at the one under test.
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("/usr/local/bin/lowport", env!("CARGO_BIN_EXE_lowport"));
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
        "ExecStart=/usr/local/bin/lowport -c /etc/lowport/lowport.yaml rules apply",
        "ExecReload=/usr/local/bin/lowport -c /etc/lowport/lowport.yaml rules apply",
        "ExecStop=/usr/local/bin/lowport -c /etc/lowport/lowport.yaml rules remove",
    ] {
        assert!(
            text.contains(needle),
            "lowport-rules.service lacks {needle}"
        );
    }
}

#[test]
fn rules_unit_keeps_the_capabilities_iptables_legacy_needs() {
    let text = std::fs::read_to_string(unit_dir().join("lowport-rules.service")).unwrap();
    let set = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a capability bounding set");
    // iptables-legacy talks to its tables through a raw socket.
    for cap in ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_DAC_OVERRIDE"] {
        assert!(
            set.split_whitespace().any(|c| c == cap),
            "{cap} missing: {set}"
        );
    }
}

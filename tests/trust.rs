//! What root trusts: a config file (and its directories) nobody but root
//! or the invoking user can change, and helper programs from the system's
//! own directories, never from an inherited PATH.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{private_dir, require_root, Netns};

/// Removes a directory this test made, also when it fails.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

const CONFIG: &str = "mappings:\n  - name: ssh\n    listen: 80\n    to: 22\n";

#[test]
fn root_refuses_a_config_another_user_can_change() {
    if !require_root("root_refuses_a_config_another_user_can_change") {
        return;
    }
    let ns = Netns::new("trust");
    let dir = TempDir(private_dir("lowport-test-config"));
    chmod(&dir.0, 0o755);
    let file = dir.0.join("lowport.yaml");
    std::fs::write(&file, CONFIG).expect("write config");
    let f = file.to_str().unwrap();

    // Owned by nobody, writable by everyone.
    std::os::unix::fs::chown(&file, Some(65534), Some(65534)).expect("chown");
    chmod(&file, 0o666);
    for args in [vec!["-c", f, "rules", "apply"], vec!["-c", f, "check"]] {
        let out = ns.lowport(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} accepted it: {err}");
        assert!(err.contains(f) && err.contains("chmod go-w"), "{err}");
    }
    assert!(ns.nft_table().is_none(), "rules installed from it");

    // Root's file, but writable by everyone.
    std::os::unix::fs::chown(&file, Some(0), Some(0)).expect("chown");
    let out = ns.lowport(&["-c", f, "rules", "apply"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("writable by everyone"));

    // Root's 0644 file in a directory everyone can write (not sticky):
    // anyone could replace it.
    chmod(&file, 0o644);
    chmod(&dir.0, 0o777);
    let out = ns.lowport(&["-c", f, "rules", "apply"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&dir.0.display().to_string()), "{err}");
    assert!(ns.nft_table().is_none());

    // Control: the same file in a directory only root can write.
    chmod(&dir.0, 0o755);
    ns.lowport_ok(&["-c", f, "rules", "apply"]);
    ns.lowport_ok(&["rules", "remove"]);
}

/// The helper programs lowport runs, faked: each leaves a mark.
const HELPERS: [&str; 10] = [
    "nft",
    "iptables",
    "iptables-nft-save",
    "iptables-nft-restore",
    "ip6tables-nft-save",
    "ip6tables-nft-restore",
    "iptables-legacy-save",
    "iptables-legacy-restore",
    "ip6tables-legacy-save",
    "ip6tables-legacy-restore",
];

#[test]
fn helper_programs_come_from_the_system_not_from_path() {
    if !require_root("helper_programs_come_from_the_system_not_from_path") {
        return;
    }
    let ns = Netns::new("path");
    let fakes = TempDir(private_dir("lowport-test-fakes"));
    let mark = fakes.0.join("ran");
    for name in HELPERS {
        let path = fakes.0.join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho {name} >> {}\nexit 1\n", mark.display()),
        )
        .expect("write fake");
        chmod(&path, 0o755);
    }
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", fakes.0.display());
    let run = |args: &[&str], flavor: Option<&str>| {
        let mut cmd = ns.command(common::lowport_bin());
        cmd.env("PATH", &path).env_remove("LOWPORT_IPTABLES");
        if let Some(flavor) = flavor {
            cmd.env("LOWPORT_IPTABLES", flavor);
        }
        let out = cmd.args(args).output().expect("run lowport");
        assert!(
            out.status.success() || args.contains(&"check"),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // `iptables --version` decides the flavour when nothing else does.
    for flavor in [Some("nft"), Some("legacy"), None] {
        run(
            &["-m", "80:8080", "rules", "apply", "--backend", "iptables"],
            flavor,
        );
        run(
            &["-m", "80:8080", "rules", "show", "--backend", "iptables"],
            flavor,
        );
        run(
            &["-m", "80:8080", "rules", "remove", "--backend", "iptables"],
            flavor,
        );
    }
    run(&["-m", "80:8080", "check"], None);
    let ran = std::fs::read_to_string(&mark).unwrap_or_default();
    assert!(ran.is_empty(), "programs from PATH ran as root:\n{ran}");
}

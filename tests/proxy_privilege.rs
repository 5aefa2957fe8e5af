//! Privilege after binding: with a file capability, started as root, and
//! through systemd socket activation. Each serves port 80 and then holds no
//! capability at all (read from /proc/PID/status).

mod common;
mod proxy_support;

use std::path::{Path, PathBuf};

use std::process::Command;

use common::{require_root, sh, Netns};
use proxy_support::*;

fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in status:\n{status}"))
}

fn assert_unprivileged(status: &str) {
    for key in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(
            status_field(status, key),
            "0000000000000000",
            "{key}\n{status}"
        );
    }
    let uids = status_field(status, "Uid");
    assert!(
        uids.split_whitespace().all(|u| u != "0"),
        "uid 0 left: {uids}"
    );
    assert_eq!(status_field(status, "NoNewPrivs"), "1", "{status}");
}

fn served_on_80(ns: &Netns) {
    let mut c = connect_in(ns, "127.0.0.1:80").expect("connect to :80");
    round_trip(&mut c, b"through port 80").expect("echo through :80");
    let mut c = connect_in(ns, "[::1]:80").expect("connect to [::1]:80");
    round_trip(&mut c, b"through port 80 over IPv6").expect("echo through [::1]:80");
}

/// Is `path` on a nosuid mount (where the kernel ignores file capabilities)?
fn on_nosuid_mount(path: &Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statvfs writes only into the zeroed struct; `c` is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(
            libc::statvfs(c.as_ptr(), &mut st),
            0,
            "statvfs {}",
            path.display()
        );
        st.f_flag & libc::ST_NOSUID != 0
    }
}

/// A directory that user nobody can reach, removed on drop.
struct OwnDir(PathBuf);

impl Drop for OwnDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory for a capable copy of the binary, on a filesystem that
/// honours file capabilities: /tmp is a nosuid tmpfs on Debian 13.
fn suid_capable_dir(tag: &str) -> OwnDir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let bases = [
        Path::new("/var/tmp"),
        Path::new(env!("CARGO_TARGET_TMPDIR")),
    ];
    let base = bases
        .iter()
        .find(|b| b.is_dir() && !on_nosuid_mount(b) && common::runnable_by_anyone(b) == **b)
        .unwrap_or_else(|| panic!("no directory without nosuid that nobody can reach: {bases:?}"));
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = base.join(format!("lp-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    set_mode(&dir, 0o755);
    OwnDir(dir)
}

/// A copy of the binary that nobody can run, with cap_net_bind_service=+ep.
fn capable_binary_in(dir: &Path) -> PathBuf {
    let bin = dir.join("lowport");
    std::fs::copy(common::lowport_bin(), &bin).expect("copy binary");
    set_mode(&bin, 0o755);
    sh(
        "setcap",
        &["cap_net_bind_service=+ep", bin.to_str().expect("path")],
    );
    bin
}

fn capable_binary() -> (OwnDir, PathBuf) {
    let dir = suid_capable_dir("cap");
    let bin = capable_binary_in(&dir.0);
    (dir, bin)
}

#[test]
fn file_capability_binds_80_then_drops_everything() {
    if !require_root("file_capability_binds_80_then_drops_everything") {
        return;
    }
    let ns = Netns::new("pxcap");
    echo_server(&ns, "127.0.0.1:8080");
    let (dir, bin) = capable_binary();
    let cfg = write_config(&dir.0, "mappings:\n  - listen: 80\n    to: 8080\n");
    let mut launch = Launch::new(&ns, &cfg);
    launch.binary = bin;
    let proxy = launch.start();
    let line = proxy.expect_line_in_log("privileges:");
    assert!(line.contains("started as capabilities"), "{line}");
    assert_unprivileged(&proxy.status());
    served_on_80(&ns);
}

#[test]
fn started_as_root_switches_to_nobody() {
    if !require_root("started_as_root_switches_to_nobody") {
        return;
    }
    let ns = Netns::new("pxroot");
    echo_server(&ns, "127.0.0.1:8080");
    let dir = temp_dir("root");
    let cfg = write_config(
        &dir,
        "mappings:\n  - listen: 80\n    to: 8080\nproxy:\n  user: nobody\n",
    );
    let mut launch = Launch::new(&ns, &cfg);
    launch.user = None;
    let proxy = launch.start();
    let status = proxy.status();
    assert_unprivileged(&status);
    assert_eq!(
        status_field(&status, "Uid").split_whitespace().next(),
        Some("65534")
    );
    assert_eq!(status_field(&status, "Groups"), "", "groups cleared");
    assert_eq!(
        status_field(&status, "CapBnd"),
        "0000000000000000",
        "bounding set cleared"
    );
    served_on_80(&ns);
}

/// A tmpfs mounted nosuid for one test; unmounted on drop.
struct NosuidMount(OwnDir);

impl Drop for NosuidMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0 .0).status();
    }
}

/// On a nosuid mount the kernel ignores the binary's capability: the bind
/// error says so instead of suggesting the setcap that is already there.
#[test]
fn capable_binary_on_a_nosuid_mount_is_told_so() {
    if !require_root("capable_binary_on_a_nosuid_mount_is_told_so") {
        return;
    }
    let mount = NosuidMount(suid_capable_dir("nosuid"));
    let dir = mount.0 .0.clone();
    sh(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "nosuid,mode=755",
            "lp-nosuid",
            dir.to_str().expect("path"),
        ],
    );
    assert!(on_nosuid_mount(&dir));
    let bin = capable_binary_in(&dir);
    let cfg = write_config(&dir, "mappings:\n  - listen: 80\n    to: 8080\n");
    let ns = Netns::new("pxnosuid");
    let out = ns
        .command("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(&bin)
        .args(["-c", cfg.to_str().expect("path"), "proxy"])
        .output()
        .expect("run lowport");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nosuid"), "{stderr}");
    assert!(!stderr.contains("setcap cap_net_bind_service"), "{stderr}");
}

#[test]
fn unknown_proxy_user_is_a_config_error() {
    if !require_root("unknown_proxy_user_is_a_config_error") {
        return;
    }
    let ns = Netns::new("pxnouser");
    let dir = temp_dir("nouser");
    let cfg = write_config(
        &dir,
        "mappings:\n  - listen: 80\n    to: 8080\nproxy:\n  user: no-such-user-lowport\n",
    );
    let out = ns.lowport(&["-c", cfg.to_str().expect("path"), "proxy"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-user-lowport"));
}

/// systemd-socket-activate binds :80 (as root) and passes the socket; the
/// proxy runs as nobody without any capability and serves it. A second
/// mapping on an unprivileged port, not passed, is bound by the proxy.
#[test]
fn socket_activation_needs_no_capability() {
    if !require_root("socket_activation_needs_no_capability") {
        return;
    }
    if !have("systemd-socket-activate") {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "systemd-socket-activate missing under CI"
        );
        eprintln!("SKIPPED: systemd-socket-activate missing");
        return;
    }
    let ns = Netns::new("pxsock");
    echo_server(&ns, "127.0.0.1:8080");
    let dir = temp_dir("sock");
    let cfg = write_config(
        &dir,
        "mappings:\n  - name: web\n    listen: 80\n    to: 8080\n  - listen: 9081\n    to: 8080\n",
    );
    let mut launch = Launch::new(&ns, &cfg);
    launch.wrapper = vec![
        "systemd-socket-activate".into(),
        "--listen=80".into(),
        "--fdname=web".into(),
    ];
    // systemd-socket-activate starts the service at the first connection.
    let proxy = launch.spawn();
    proxy.expect_line("Listening on", std::time::Duration::from_secs(10));
    served_on_80(&ns);
    let line = proxy.expect_line_in_log("lowport proxy listening");
    assert!(line.contains("socket-activated"), "{line}");
    assert!(line.contains("started as unprivileged"), "{line}");
    assert_unprivileged(&proxy.status());
    let mut c = connect_in(&ns, "127.0.0.1:9081").expect("connect 9081");
    round_trip(&mut c, b"bound by the proxy").expect("echo 9081");
}

trait LogExt {
    fn expect_line_in_log(&self, needle: &str) -> String;
}

impl LogExt for Proxy {
    /// A line already logged (the start-up line has been waited for).
    fn expect_line_in_log(&self, needle: &str) -> String {
        let log = self.log_text();
        log.lines()
            .find(|l| l.contains(needle))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{log}"))
    }
}

//! Privilege after binding: with a file capability, started as root, and
//! through systemd socket activation. Each serves port 80 and then holds no
//! capability at all (read from /proc/PID/status).

mod common;
mod proxy_support;

use std::path::{Path, PathBuf};

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

/// A directory removed with everything in it on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Is `path` and every directory above it owned by root and writable by
/// no one else (what the capable binary asks of its configuration)?
fn root_controlled(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    path.ancestors()
        .all(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0))
}

/// Does the filesystem of `path` honour file capabilities (not nosuid)?
fn honours_file_caps(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statvfs is plain old data, filled in by statvfs(3).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_flag & libc::ST_NOSUID == 0
}

/// Can `nobody` reach `dir` (search permission on every directory)?
fn reachable(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors()
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

static DIRS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A fresh directory under the first of `bases` that `fits`, mode 0755.
fn fresh_dir(tag: &str, bases: &[PathBuf], fits: impl Fn(&Path) -> bool) -> TempDir {
    let base = bases
        .iter()
        .find(|b| fits(b))
        .unwrap_or_else(|| panic!("no directory fits {tag} among {bases:?}"));
    let n = DIRS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = base.join(format!("lp-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("mkdir");
    set_mode(&dir, 0o755);
    TempDir(dir)
}

/// A directory for a configuration root controls (as /etc/lowport would
/// be): every directory above it root's and writable by root only.
fn root_config_dir(tag: &str) -> TempDir {
    let bases = [
        PathBuf::from("/run"),
        PathBuf::from("/var/lib"),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ];
    fresh_dir(tag, &bases, |b| root_controlled(b) && reachable(b))
}

/// A copy of the binary that anybody can run, with cap_net_bind_service=+ep,
/// on a filesystem that honours file capabilities (a nosuid /tmp does not).
fn capable_binary() -> (TempDir, PathBuf) {
    let dir = suid_capable_dir("cap");
    let bin = capable_binary_in(&dir.0);
    (dir, bin)
}

/// A fresh directory that nobody can reach, on a filesystem that honours
/// file capabilities (/tmp is a nosuid tmpfs on Debian 13).
fn suid_capable_dir(tag: &str) -> TempDir {
    let bases = [
        std::env::temp_dir(),
        PathBuf::from("/var/tmp"),
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    ];
    fresh_dir(tag, &bases, |b| honours_file_caps(b) && reachable(b))
}

/// A copy of the binary in `dir` that anybody can run, with
/// cap_net_bind_service=+ep.
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

#[test]
fn file_capability_binds_80_then_drops_everything() {
    if !require_root("file_capability_binds_80_then_drops_everything") {
        return;
    }
    let ns = Netns::new("pxcap");
    echo_server(&ns, "127.0.0.1:8080");
    let (_bin_dir, bin) = capable_binary();
    let dir = root_config_dir("capcfg");
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
struct NosuidMount(TempDir);

impl Drop for NosuidMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0 .0)
            .status();
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
    assert!(!honours_file_caps(&dir));
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
    if !have_tool(
        "systemd-socket-activate",
        "socket_activation_needs_no_capability",
    ) {
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

/// A user made for one test with `useradd`, deleted again on drop (also
/// when the test fails).
struct ThrowawayUser {
    name: String,
}

impl ThrowawayUser {
    /// `useradd` NAME with these extra options; no home directory.
    fn new(tag: &str, options: &[&str]) -> ThrowawayUser {
        let name = format!("lp{tag}{}", std::process::id());
        let mut args = vec!["-M", "-s", "/usr/sbin/nologin"];
        args.extend_from_slice(options);
        args.push(&name);
        sh("useradd", &args);
        ThrowawayUser { name }
    }
}

impl Drop for ThrowawayUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .arg(&self.name)
            .status();
        // A user-private group (useradd -U) goes with its user.
    }
}

/// proxy.user whose primary group is root (`useradd -g 0`) is refused
/// like user root: the proxy would serve with gid 0. Exit 2, naming the
/// user and what to do.
#[test]
fn a_proxy_user_in_group_root_is_refused() {
    if !require_root("a_proxy_user_in_group_root_is_refused") {
        return;
    }
    let ns = Netns::new("pxgid0");
    echo_server(&ns, "127.0.0.1:8080");
    let user = ThrowawayUser::new("g0", &["-g", "0"]);
    let dir = temp_dir("gid0");
    let cfg = write_config(
        &dir,
        &format!(
            "mappings:\n  - listen: 80\n    to: 8080\nproxy:\n  user: {}\n",
            user.name
        ),
    );
    let mut launch = Launch::new(&ns, &cfg);
    launch.user = None;
    let mut proxy = launch.spawn();
    let code = proxy.wait_exit(std::time::Duration::from_secs(10));
    let log = proxy.log_text();
    assert_eq!(code, Some(2), "not refused:\n{log}");
    assert!(
        log.contains(&user.name) && log.contains("primary group 0"),
        "{log}"
    );
}

/// A proxy.user with root as a supplementary group serves without it:
/// the proxy clears supplementary groups before it switches.
#[test]
fn a_supplementary_root_group_is_dropped() {
    if !require_root("a_supplementary_root_group_is_dropped") {
        return;
    }
    let ns = Netns::new("pxsupp0");
    echo_server(&ns, "127.0.0.1:8080");
    let user = ThrowawayUser::new("s0", &["-U", "-G", "root"]);
    let dir = temp_dir("supp0");
    let cfg = write_config(
        &dir,
        &format!(
            "mappings:\n  - listen: 80\n    to: 8080\nproxy:\n  user: {}\n",
            user.name
        ),
    );
    let mut launch = Launch::new(&ns, &cfg);
    launch.user = None;
    let proxy = launch.start();
    let status = proxy.status();
    assert_unprivileged(&status);
    assert_eq!(status_field(&status, "Groups"), "", "groups cleared");
    let gids = status_field(&status, "Gid");
    assert!(gids.split_whitespace().all(|g| g != "0"), "gid 0: {gids}");
    served_on_80(&ns);
}

/// `nobody` runs the capable binary (cap_net_bind_service=+ep) with
/// something root does not control, and is refused (exit 2) with how to
/// set it up: `-m` (which took ssh's port 22 before), a configuration file
/// it owns, one in a world-writable directory, and LOWPORT_CONFIG. The
/// same binary serves root's file (`file_capability_binds_80_then_drops_everything`).
#[test]
fn the_capable_binary_serves_only_what_root_controls() {
    if !require_root("the_capable_binary_serves_only_what_root_controls") {
        return;
    }
    let ns = Netns::new("pxcapuser");
    echo_server(&ns, "127.0.0.1:8080");
    let (_bin_dir, bin) = capable_binary();
    let root_dir = root_config_dir("capok");
    let good = write_config(&root_dir.0, "mappings:\n  - listen: 80\n    to: 8080\n");
    let owned_dir = root_config_dir("capown");
    let owned = write_config(&owned_dir.0, "mappings:\n  - listen: 80\n    to: 8080\n");
    std::os::unix::fs::chown(&owned, Some(65534), Some(65534)).expect("chown");
    let open_dir = root_config_dir("capww");
    set_mode(&open_dir.0, 0o1777);
    let open = write_config(&open_dir.0, "mappings:\n  - listen: 80\n    to: 8080\n");

    // As nobody, ended after 10 s if it serves (124: it did).
    let run = |args: &[&str], env: &[(&str, &Path)]| {
        let mut cmd = ns.command("timeout");
        cmd.args([
            "10",
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ])
        .arg(&bin)
        .args(args)
        .env_remove("LOWPORT_CONFIG")
        .env_remove("LOWPORT_STATE_DIR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run the capable binary");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let path = |p: &Path| p.to_str().expect("path").to_owned();
    // Arguments, environment, what the refusal says.
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a Path)>, &'a str);
    let cases: [Case; 5] = [
        (
            vec!["-m".into(), "22:8080".into(), "proxy".into()],
            vec![],
            "-m is not accepted",
        ),
        (
            vec![
                "-c".into(),
                path(&good),
                "-m".into(),
                "2222:8080".into(),
                "proxy".into(),
            ],
            vec![],
            "-m is not accepted",
        ),
        (
            vec!["-c".into(), path(&owned), "proxy".into()],
            vec![],
            "is owned by uid 65534, not by root",
        ),
        (
            vec!["-c".into(), path(&open), "proxy".into()],
            vec![],
            "is writable by its group or by everyone (mode 1777)",
        ),
        (
            vec!["proxy".into()],
            vec![("LOWPORT_CONFIG", good.as_path())],
            "LOWPORT_CONFIG is set",
        ),
    ];
    for (args, env, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = run(&args, &env);
        assert_eq!(code, Some(2), "{args:?} {env:?} not refused: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            stderr.contains("install -m 0644 -o root -g root lowport.yaml /etc/lowport/"),
            "{args:?}: no setup advice: {stderr}"
        );
        let refused_port = connect_in(&ns, "127.0.0.1:22").is_err();
        assert!(refused_port, "port 22 served");
    }
    // The same binary, as the same user, serves root's file.
    let mut launch = Launch::new(&ns, &good);
    launch.binary = bin.clone();
    let proxy = launch.start();
    assert_unprivileged(&proxy.status());
    served_on_80(&ns);
}

//! `lowport rules watch`, end to end in namespaces this test makes: the
//! real binary, real traffic from a neighbour through the mapping while
//! something else rewrites the firewall, and the loopback exposure that a
//! flush leaves behind without it. Every nft/iptables command runs inside
//! the test's namespace.

mod common;
use common::*;

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lowport::firewall::nft::Nftables;
use lowport::firewall::Backend;

static WATCHES: AtomicU32 = AtomicU32::new(0);

/// The typical /etc/nftables.conf of Debian: flush, then an inet filter table.
const NFTABLES_CONF: &str = "#!/usr/sbin/nft -f
flush ruleset
table inet filter {
	chain input {
		type filter hook input priority filter; policy accept;
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
	}
	chain output {
		type filter hook output priority filter; policy accept;
	}
}
";

/// A running `lowport rules watch` in a namespace: readiness through its
/// own NOTIFY_SOCKET (the sd_notify protocol), its log in a private file.
/// Killed and its files removed on drop.
struct Watch {
    child: Option<Child>,
    dir: PathBuf,
    notify: UnixDatagram,
}

impl Watch {
    fn start(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Watch {
        let n = WATCHES.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("lowport-watch-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("make the watch's directory");
        let notify = UnixDatagram::bind(dir.join("notify")).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let log = std::fs::File::create(dir.join("log")).expect("log file");
        let mut cmd = ns.command(lowport_bin());
        cmd.args(args)
            .env("NOTIFY_SOCKET", dir.join("notify"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start rules watch");
        let w = Watch {
            child: Some(child),
            dir,
            notify,
        };
        w.wait_ready();
        w
    }

    /// Wait for the next READY=1 (after start, and after each SIGHUP).
    fn wait_ready(&self) {
        let mut buf = [0u8; 512];
        loop {
            match retry_eintr(|| self.notify.recv(&mut buf)) {
                Ok(n) if String::from_utf8_lossy(&buf[..n]).contains("READY=1") => return,
                Ok(_) => continue,
                Err(e) => panic!("rules watch never became ready ({e}):\n{}", self.log()),
            }
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Wait until the log has `text` (up to 30 s).
    fn wait_log(&self, text: &str) {
        let end = Instant::now() + Duration::from_secs(30);
        while !self.log().contains(text) {
            assert!(
                Instant::now() < end,
                "no {text:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < end, "watch did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU time used so far (user + system), in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // Fields 14 and 15 of stat(5); `after` starts at field 3.
        f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run `f` on a new thread inside namespace `ns` (not joined).
fn spawn_in<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        use std::os::fd::AsRawFd;
        // SAFETY: the fd is a valid namespace file for the call; setns only
        // changes this new thread's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

/// Clients in a loop from the remote through the mapping, until stopped:
/// each connects, reads the banner, and checks one echo.
struct Clients {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(u32, Vec<String>)>,
}

impl Clients {
    fn start(ns: &Netns, addr: &str) -> Clients {
        let addr: SocketAddr = addr.parse().expect("address");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = spawn_in(ns, move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                match tcp_banner(addr) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        });
        // At least one round trip before the caller disturbs anything.
        std::thread::sleep(Duration::from_millis(200));
        Clients { stop, handle }
    }

    /// Stop, and return (requests served, failures).
    fn finish(self) -> (u32, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("client thread")
    }
}

/// Does a datagram from the remote to the host's 127.0.0.1:`port` reach a
/// listener there? (After `make_remote_route_loopback_to_host`.)
fn udp_reaches_host_loopback(lan: &Lan, port: u16) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let listener = spawn_in(&lan.host, move || {
        let sock = UdpSocket::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
        sock.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        tx.send(()).expect("ready");
        let mut buf = [0u8; 64];
        retry_eintr(|| sock.recv(&mut buf)).is_ok()
    });
    rx.recv().expect("listener ready");
    lan.remote.enter(move || {
        let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
        for _ in 0..3 {
            let _ = sock.send_to(b"probe", ("127.0.0.1", port));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    listener.join().expect("listener thread")
}

/// TCP connections half-open in the host's namespace (`ss state syn-recv`).
fn syn_recv(ns: &Netns) -> String {
    ns.ok("ss", &["-Htn", "state", "syn-recv"])
        .trim()
        .to_owned()
}

/// Poll `done` every millisecond for up to 30 s; the time it took.
fn time_until(mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not healed within 30 s"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

/// lowport's rules as the kernel has them, read in the namespace.
fn installed(ns: &Netns) -> Option<lowport::firewall::plan::RuleSet> {
    ns.enter(|| Nftables::new().list().ok().flatten())
}

fn write_file(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// Is the running kernel at least `major.minor`?
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    have >= (major, minor)
}

/// NFT_TABLE_F_PERSIST arrived in Linux 6.9.
fn kernel_has_persist(w: &Watch) -> bool {
    let has = kernel_at_least(6, 9);
    assert_eq!(
        has,
        w.log().contains("owned and persistent"),
        "the watch's idea of the persist flag differs from the kernel version:\n{}",
        w.log()
    );
    has
}

#[test]
fn watch_keeps_serving_through_flush_and_nft_f_and_owns_its_table() {
    if !require_root("watch_keeps_serving_through_flush_and_nft_f_and_owns_its_table") {
        return;
    }
    let mut lan = Lan::new("wown");
    lan.host.start_backend("127.0.0.1:8080");
    let w = Watch::start(
        &lan.host,
        &["-m", "80:127.0.0.1:8080", "rules", "watch"],
        &[],
    );
    assert_eq!(lan.host.sysctl("net.ipv4.conf.all.route_localnet"), "1");
    let before = installed(&lan.host).expect("rules installed");
    assert!(before.loopback_guard);

    let clients = Clients::start(&lan.remote, &format!("{}:80", Lan::HOST_V4));
    lan.host.ok("nft", &["flush", "ruleset"]);
    let conf = write_file(&w.dir, "nftables.conf", NFTABLES_CONF);
    lan.host.ok("nft", &["-f", &conf.display().to_string()]);
    // Another process may not delete it.
    let del = lan.host.run("nft", &["delete", "table", "inet", "lowport"]);
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = clients.finish();
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}",
        failed.len()
    );
    assert!(ok > 0);
    assert_eq!(installed(&lan.host).as_ref(), Some(&before));
    // The inet filter table from the file is there too: the flush worked.
    assert!(lan
        .host
        .run("nft", &["list", "table", "inet", "filter"])
        .status
        .success());
    if kernel_at_least(5, 12) {
        assert!(w.log().contains("is owned"), "{}", w.log());
        assert!(!del.status.success(), "nft delete table succeeded");
    }

    // The exposure: the guard survived the flush, so a neighbour routing
    // 127.0.0.0/8 at the host reaches nothing bound to 127.0.0.1.
    lan.make_remote_route_loopback_to_host();
    assert!(
        !udp_reaches_host_loopback(&lan, 9053),
        "a datagram from the LAN reached 127.0.0.1"
    );
    assert!(lan.remote_connects_to_host_loopback(8080).is_err());
    assert_eq!(
        syn_recv(&lan.host),
        "",
        "SYN-RECV from the LAN on a loopback listener"
    );

    // By hand, while watch runs: refused, naming the watch.
    for args in [
        &["-m", "80:127.0.0.1:8080", "rules", "apply"][..],
        &["rules", "remove"][..],
    ] {
        let out = lan.host.lowport(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("lowport rules watch (pid {})", w.pid())),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(installed(&lan.host).as_ref(), Some(&before));

    // SIGTERM: rules removed, route_localnet back to 0, exit 0.
    let mut w = w;
    w.signal(libc::SIGTERM);
    assert!(w.wait_exit().success(), "{}", w.log());
    assert!(lan.host.nft_table().is_none());
    assert_eq!(lan.host.sysctl("net.ipv4.conf.all.route_localnet"), "0");
}

#[test]
fn sigkill_leaves_rules_serving_and_a_new_watch_adopts_them() {
    if !require_root("sigkill_leaves_rules_serving_and_a_new_watch_adopts_them") {
        return;
    }
    let mut lan = Lan::new("wkil");
    lan.host.start_backend("[::]:8080");
    let args = ["-m", "80:8080", "rules", "watch"];
    let mut w = Watch::start(&lan.host, &args, &[]);
    if !kernel_has_persist(&w) {
        eprintln!("SKIPPED adoption: this kernel has no NFT_TABLE_F_PERSIST (Linux < 6.9)");
        return;
    }
    let clients = Clients::start(&lan.remote, &format!("{}:80", Lan::HOST_V4));
    w.signal(libc::SIGKILL);
    w.wait_exit();
    std::thread::sleep(Duration::from_millis(200));
    let orphan = installed(&lan.host).expect("the rules outlive the killed watch");
    let w2 = Watch::start(&lan.host, &args, &[]);
    assert!(
        w2.log().contains("adopted table inet lowport"),
        "{}",
        w2.log()
    );
    std::thread::sleep(Duration::from_millis(200));
    let (ok, failed) = clients.finish();
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}",
        failed.len()
    );
    assert!(ok > 0);
    assert_eq!(installed(&lan.host), Some(orphan));
    // The new watch owns it: another process cannot delete it.
    assert!(!lan
        .host
        .run("nft", &["delete", "table", "inet", "lowport"])
        .status
        .success());
}

#[test]
fn without_the_owner_flag_changes_are_healed_and_a_fight_backs_off() {
    if !require_root("without_the_owner_flag_changes_are_healed_and_a_fight_backs_off") {
        return;
    }
    let mut lan = Lan::new("wevt");
    lan.host.start_backend("127.0.0.1:8080");
    // As on a kernel without NFT_TABLE_F_OWNER (< 5.12): events only.
    let w = Watch::start(
        &lan.host,
        &["-m", "80:127.0.0.1:8080", "rules", "watch"],
        &[("LOWPORT_WATCH_TABLE_FLAGS", "none")],
    );
    assert!(w.log().contains("not owned"), "{}", w.log());
    let want = installed(&lan.host).expect("installed");

    lan.host.ok("nft", &["flush", "ruleset"]);
    let t = time_until(|| installed(&lan.host).as_ref() == Some(&want));
    eprintln!("nftables (events only): healed after flush ruleset in {t:?}");
    lan.host.ok("nft", &["delete", "table", "inet", "lowport"]);
    let t = time_until(|| installed(&lan.host).as_ref() == Some(&want));
    eprintln!("nftables (events only): healed after delete table in {t:?}");
    let conf = write_file(&w.dir, "nftables.conf", NFTABLES_CONF);
    lan.host.ok("nft", &["-f", &conf.display().to_string()]);
    time_until(|| installed(&lan.host).as_ref() == Some(&want));
    assert_reaches(&lan.remote, &format!("{}:80", Lan::HOST_V4), 8080, None);
    assert_eq!(lan.host.sysctl("net.ipv4.conf.all.route_localnet"), "1");

    // A fight: delete the table a hundred times a second for five seconds.
    let cpu_before = w.cpu_ticks();
    // Four threads at 25/s each: one delete (closing its socket waits for
    // an RCU grace period) can take longer than 10 ms.
    let fighters: Vec<_> = (0..4)
        .map(|_| {
            spawn_in(&lan.host, || {
                let mut nft = Nftables::new();
                let start = Instant::now();
                let mut n = 0;
                while start.elapsed() < Duration::from_secs(5) {
                    let _ = nft.remove();
                    n += 1;
                    let next = start + Duration::from_millis(40 * n);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                n
            })
        })
        .collect();
    let deletes: u64 = fighters.into_iter().map(|f| f.join().expect("fight")).sum();
    let ticks = w.cpu_ticks() - cpu_before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    eprintln!(
        "fight: {deletes} deletes in 5 s; watch used {:.2} s of CPU ({:.1}%)",
        ticks as f64 / hz,
        ticks as f64 / hz / 5.0 * 100.0
    );
    let log = w.log();
    assert!(
        log.contains("something keeps changing lowport's rules"),
        "{log}"
    );
    // While it waited, the guard was missing: route_localnet went off.
    assert!(
        log.contains("loopback guard is missing: sysctl put back"),
        "{log}"
    );
    // The rules come back after the fight (at the end of the back-off).
    time_until(|| installed(&lan.host).as_ref() == Some(&want));
    w.wait_log("the end of a back-off");
    assert_eq!(lan.host.sysctl("net.ipv4.conf.all.route_localnet"), "1");
    assert_reaches(&lan.remote, &format!("{}:80", Lan::HOST_V4), 8080, None);

    // After another flush, healed: the guard is back with route_localnet.
    lan.host.ok("nft", &["flush", "ruleset"]);
    time_until(|| installed(&lan.host).as_ref() == Some(&want));
    lan.make_remote_route_loopback_to_host();
    assert!(
        !udp_reaches_host_loopback(&lan, 9053),
        "a datagram from the LAN reached 127.0.0.1"
    );
    assert!(lan.remote_connects_to_host_loopback(8080).is_err());
    assert_eq!(
        syn_recv(&lan.host),
        "",
        "SYN-RECV from the LAN on a loopback listener"
    );
}

/// iptables with a given flavour, run inside `ns`.
fn iptables_tool(ns: &Netns, flavor: &str, tool: &str, args: &[&str], input: Option<&str>) {
    use std::io::Write;
    let mut child = ns
        .command(format!("{tool}-{flavor}-restore"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}-{flavor}-restore: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.unwrap_or("").as_bytes())
        .expect("write");
    let mut err = String::new();
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err);
    assert!(
        child.wait().expect("wait").success(),
        "{tool}-{flavor}-restore: {err}"
    );
}

fn has_iptables(flavor: &str) -> bool {
    let ok = std::process::Command::new(format!("iptables-{flavor}-restore"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("iptables-{flavor} is missing under CI=true");
    }
    ok
}

/// The whole nat table, without lowport's chains, as netfilter-persistent
/// would restore it.
const NAT_WITHOUT_LOWPORT: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
";

fn iptables_heals(flavor: &str) {
    let mut lan = Lan::new(&format!("wi{}", &flavor[..3]));
    lan.host.start_backend("[::]:8080");
    let w = Watch::start(
        &lan.host,
        &[
            "-m",
            "80:8080",
            "rules",
            "watch",
            "--backend",
            "iptables",
            "--interval",
            "500ms",
        ],
        &[("LOWPORT_IPTABLES", flavor)],
    );
    assert!(
        w.log().contains(&format!("iptables-{flavor}")),
        "{}",
        w.log()
    );
    let show = |lan: &Lan| {
        let out = lan
            .host
            .command(lowport_bin())
            .env("LOWPORT_IPTABLES", flavor)
            .args(["rules", "show", "--backend", "iptables"])
            .output()
            .expect("rules show");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let want = show(&lan);
    assert!(want.contains("*:80"), "{want}");
    assert_reaches(&lan.remote, &format!("{}:80", Lan::HOST_V4), 8080, None);

    iptables_tool(
        &lan.host,
        flavor,
        "iptables",
        &[],
        Some(NAT_WITHOUT_LOWPORT),
    );
    let healed = |lan: &Lan| {
        let out = lan.host.run(
            &format!("iptables-{flavor}"),
            &["-t", "nat", "-S", "PREROUTING"],
        );
        String::from_utf8_lossy(&out.stdout).contains("LOWPORT")
    };
    let t = time_until(|| healed(&lan));
    eprintln!("iptables-{flavor}: healed after iptables-restore in {t:?} (as seen by polling iptables-{flavor})");
    w.wait_log("put back");
    for line in w.log().lines().filter(|l| l.contains("put back")) {
        eprintln!("iptables-{flavor}: {line}");
    }
    time_until(|| show(&lan) == want);
    assert_reaches(&lan.remote, &format!("{}:80", Lan::HOST_V4), 8080, None);
}

#[test]
fn iptables_nft_restore_without_lowports_chains_is_healed() {
    if !require_root("iptables_nft_restore_without_lowports_chains_is_healed")
        || !has_iptables("nft")
    {
        return;
    }
    iptables_heals("nft");
}

#[test]
fn iptables_legacy_is_healed_within_the_interval() {
    if !require_root("iptables_legacy_is_healed_within_the_interval") || !has_iptables("legacy") {
        return;
    }
    iptables_heals("legacy");
}

#[test]
fn sighup_applies_a_changed_config_and_keeps_the_rules_on_an_invalid_one() {
    if !require_root("sighup_applies_a_changed_config_and_keeps_the_rules_on_an_invalid_one") {
        return;
    }
    let mut lan = Lan::new("whup");
    lan.host.start_backend("[::]:8080");
    let dir = std::env::temp_dir().join(format!("lowport-watch-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let config = write_file(
        &dir,
        "lowport.yaml",
        "mappings:\n  - listen: 80\n    to: 8080\n",
    );
    let cfg = config.display().to_string();
    let w = Watch::start(&lan.host, &["-c", &cfg, "rules", "watch"], &[]);
    assert_reaches(&lan.remote, &format!("{}:80", Lan::HOST_V4), 8080, None);

    std::fs::write(&config, "mappings:\n  - listen: 81\n    to: 8080\n").expect("write");
    w.signal(libc::SIGHUP);
    w.wait_ready();
    assert_reaches(&lan.remote, &format!("{}:81", Lan::HOST_V4), 8080, None);
    assert!(lan
        .remote
        .tcp_banner(&format!("{}:80", Lan::HOST_V4))
        .is_err());

    std::fs::write(&config, "mappings:\n  - listen: [81\n").expect("write");
    let before = installed(&lan.host);
    w.signal(libc::SIGHUP);
    w.wait_ready();
    assert!(
        w.log().contains("the configuration cannot be used"),
        "{}",
        w.log()
    );
    assert_eq!(installed(&lan.host), before);
    assert_reaches(&lan.remote, &format!("{}:81", Lan::HOST_V4), 8080, None);
}

#[test]
fn one_shot_rules_warn_and_check_reports_the_exposure_after_a_flush() {
    if !require_root("one_shot_rules_warn_and_check_reports_the_exposure_after_a_flush") {
        return;
    }
    let mut lan = Lan::new("wexp");
    lan.host.start_backend("127.0.0.1:8080");
    let out = lan
        .host
        .lowport_ok(&["-m", "80:127.0.0.1:8080", "rules", "apply"]);
    assert!(out.contains("rules watch"), "{out}");
    let check = lan.host.lowport(&["-m", "80:127.0.0.1:8080", "check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(!text.contains("loopback guard is not installed"), "{text}");

    lan.host.ok("nft", &["flush", "ruleset"]);
    assert_eq!(lan.host.sysctl("net.ipv4.conf.all.route_localnet"), "1");
    let check = lan.host.lowport(&["-m", "80:127.0.0.1:8080", "check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("loopback guard is not installed"))
        .unwrap_or_else(|| panic!("no exposure finding:\n{text}"));
    assert!(line.starts_with('✗'), "{line}");
    assert!(line.contains("LAN that route 127.0.0.0/8 here"), "{line}");
    assert!(text.contains("rules watch"), "{text}");

    // What check warns about is real: the neighbour's datagram arrives.
    lan.make_remote_route_loopback_to_host();
    assert!(
        udp_reaches_host_loopback(&lan, 9053),
        "expected the flush to expose 127.0.0.1 (route_localnet=1, no guard)"
    );
}

#[test]
fn watch_unit_is_type_notify_and_reloads_with_sighup() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist/systemd/lowport-rules-watch.service");
    let text = std::fs::read_to_string(path).expect("the unit");
    for needle in [
        "Type=notify",
        "ExecStart=/usr/bin/lowport -c /etc/lowport/lowport.yaml rules watch",
        "ExecReload=/bin/sh -c 'kill -HUP \"$MAINPID\"'",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_DAC_OVERRIDE",
        "NoNewPrivileges=yes",
        "Conflicts=lowport-rules.service",
    ] {
        assert!(
            text.contains(needle),
            "lowport-rules-watch.service lacks {needle}"
        );
    }
}

#[test]
fn keep_on_exit_leaves_the_rules_serving_with_and_without_persist() {
    if !require_root("keep_on_exit_leaves_the_rules_serving_with_and_without_persist") {
        return;
    }
    let mut lan = Lan::new("wkeep");
    lan.host.start_backend("127.0.0.1:8080");
    let args = [
        "-m",
        "80:127.0.0.1:8080",
        "rules",
        "watch",
        "--keep-on-exit",
    ];
    // "owner": as on Linux 5.12-6.8, where an owned table would go with
    // the watch's socket unless handed over first.
    for flags in ["owner", "owner,persist"] {
        if flags == "owner,persist" && !kernel_at_least(6, 9) {
            continue;
        }
        let mut w = Watch::start(&lan.host, &args, &[("LOWPORT_WATCH_TABLE_FLAGS", flags)]);
        let want = installed(&lan.host).expect("installed");
        w.signal(libc::SIGTERM);
        assert!(w.wait_exit().success(), "{}", w.log());
        assert_eq!(installed(&lan.host), Some(want), "{flags}");
        assert_eq!(lan.host.sysctl("net.ipv4.conf.all.route_localnet"), "1");
        assert_reaches(&lan.remote, &format!("{}:80", Lan::HOST_V4), 8080, None);
        // Nobody owns it now: a one-shot remove works and restores the sysctl.
        lan.host.lowport_ok(&["rules", "remove"]);
        assert!(lan.host.nft_table().is_none());
        assert_eq!(lan.host.sysctl("net.ipv4.conf.all.route_localnet"), "0");
    }
}

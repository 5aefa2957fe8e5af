//! Test helpers: throwaway network namespaces (and veth-linked "remote"
//! hosts), commands run inside them, an unprivileged backend, and cleanup on
//! drop — also when the test panics.
//!
//! Privileged tests call [`require_root`] first: outside CI they skip with a
//! printed reason; under `CI=true` a missing privilege is a failure.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

/// Path of the `lowport` binary under test.
pub fn lowport_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lowport"))
}

/// Path of the test backend (`examples/backend.rs`, built by `cargo test`).
pub fn backend_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/examples/backend
    let profile_dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let path = profile_dir.join("examples").join("backend");
    assert!(
        path.exists(),
        "{} is missing: run the whole suite with `cargo test` (it builds examples), or `cargo build --examples` first",
        path.display()
    );
    path
}

/// Directories made for this test process, removed when it exits.
static PROCESS_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn remove_process_dirs() {
    if let Ok(dirs) = PROCESS_DIRS.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `/tmp/TAG-PID`, made once per test process and removed when the
/// process exits (the test harness ends with exit(3), which runs atexit
/// handlers, whether the tests passed or failed).
pub fn process_dir(tag: &str) -> PathBuf {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        // SAFETY: registers a plain extern "C" function with no arguments.
        unsafe { libc::atexit(remove_process_dirs) };
    });
    let dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let mut dirs = PROCESS_DIRS.lock().unwrap_or_else(|e| e.into_inner());
    if !dirs.contains(&dir) {
        std::fs::create_dir_all(&dir).expect("create the test process's directory");
        dirs.push(dir.clone());
    }
    dir
}

/// `path`, or a copy of it that an unprivileged user can execute: the
/// tests run binaries as `nobody`, and a checkout under a private
/// directory (such as /root, mode 700) is not reachable for that user.
pub fn runnable_by_anyone(path: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let reachable = path.ancestors().skip(1).all(|dir| {
        dir.as_os_str().is_empty()
            || std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
    });
    if reachable {
        return path.to_owned();
    }
    let dir = process_dir("lowport-test-bin");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let copy = dir.join(path.file_name().expect("binary name"));
    if !copy.exists() {
        // Copy under another name, then rename: parallel tests of this
        // process never run a half-written file.
        let tmp = dir.join(format!(
            "{}.{:?}",
            copy.display(),
            std::thread::current().id()
        ));
        std::fs::copy(path, &tmp).expect("copy test binary");
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::rename(&tmp, &copy).expect("rename test binary");
    }
    copy
}

/// May this process run privileged tests (root, `ip netns` works)? Outside
/// CI a missing privilege skips the test with a printed reason; with
/// `CI=true` it fails it, so CI never passes a test that did not run.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let reason = if euid != 0 {
        Some("not running as root".to_owned())
    } else if Command::new("ip").arg("-V").output().is_err() {
        Some("the `ip` command (iproute2) is missing".to_owned())
    } else if Command::new("nft").arg("--version").output().is_err() {
        Some("the `nft` command (nftables) is missing".to_owned())
    } else {
        None
    };
    match reason {
        None => true,
        Some(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: cannot run under CI=true: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The state directory lowport uses in this test process (instead of the
/// host's /run/lowport), and how many namespaces use it: made private
/// (0700, a fresh name that did not exist) with the first namespace,
/// removed with the last.
static STATE_DIR: std::sync::Mutex<Option<(PathBuf, usize)>> = std::sync::Mutex::new(None);

/// This test process's private state directory for lowport (made when
/// missing). Namespaces keep it alive; see [`Netns`].
pub fn state_dir() -> PathBuf {
    let mut guard = STATE_DIR.lock().unwrap_or_else(|e| e.into_inner());
    match &*guard {
        Some((dir, _)) => dir.clone(),
        None => {
            let dir = private_dir("lowport-test-state");
            *guard = Some((dir.clone(), 0));
            dir
        }
    }
}

fn state_dir_users(delta: isize) {
    let _ = state_dir();
    let mut guard = STATE_DIR.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((dir, n)) = guard.as_mut() {
        *n = n.saturating_add_signed(delta);
        if *n == 0 && delta < 0 {
            let _ = std::fs::remove_dir_all(&*dir);
            *guard = None;
        }
    }
}

/// A new directory only this process's user can enter, under a name
/// nobody had (like mkdtemp: `create_dir` fails on an existing name).
pub fn private_dir(tag: &str) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    for attempt in 0u32.. {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("{tag}-{}-{nanos:x}-{attempt}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => continue,
            Err(e) => panic!("cannot make {}: {e}", dir.display()),
        }
    }
    unreachable!()
}

/// Run a command on the host, panic with its output unless it succeeds.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace this test made; deleted (with everything in it, its
/// rules, veths and processes' sockets) on drop.
pub struct Netns {
    pub name: String,
    children: Vec<Child>,
}

impl Netns {
    /// A fresh namespace with `lo` up. The name is unique per test process.
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("lp-{}-{}-{}", tag, std::process::id(), n);
        assert!(name.len() < 40, "namespace name too long: {name}");
        sh("ip", &["netns", "add", &name]);
        state_dir_users(1);
        let ns = Netns {
            name,
            children: Vec::new(),
        };
        ns.ok("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Run a command inside, return its output whatever the status.
    pub fn run(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd} in {}: {e}", self.name))
    }

    /// Run a command inside, panic unless it succeeds; returns stdout.
    pub fn ok(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.run(cmd, args);
        assert!(
            out.status.success(),
            "in netns {}: {cmd} {args:?} failed ({}):\n{}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A `Command` that runs `program` inside this namespace. lowport keeps
    /// its sysctl ledger in a directory of this test process, not in the
    /// host's /run/lowport.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(program)
            .env("LOWPORT_STATE_DIR", state_dir());
        c
    }

    /// Run `lowport ARGS` inside, panic unless it succeeds; returns stdout.
    pub fn lowport_ok(&self, args: &[&str]) -> String {
        let out = self.lowport(args);
        assert!(
            out.status.success(),
            "lowport {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `lowport ARGS` inside; returns the whole output.
    pub fn lowport(&self, args: &[&str]) -> Output {
        self.command(lowport_bin())
            .args(args)
            .output()
            .expect("run lowport")
    }

    /// Run a closure on a thread that has entered this namespace (netlink
    /// sockets and connects made there live in it).
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            use std::os::fd::AsRawFd;
            // SAFETY: the fd is a valid namespace file for the call's duration;
            // setns only changes this (fresh, about to end) thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }

    /// Keep a child process alive as long as the namespace; killed on drop.
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Start the test backend inside as user `nobody` (setpriv drops root
    /// before exec). It listens on `addr` (TCP and UDP) and answers each
    /// client with a banner line `backend <addr> peer <client addr>`, then
    /// echoes everything; it prints `ready` once listening.
    pub fn start_backend(&mut self, addr: &str) {
        let mut child = self
            .command("setpriv")
            .args([
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(runnable_by_anyone(&backend_bin()))
            .arg(addr)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start backend");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read backend banner");
        assert_eq!(line.trim(), "ready", "backend on {addr} did not start");
        self.adopt(child);
    }

    /// Connect from inside this namespace to `addr` over TCP, read the
    /// backend's banner line, check that one echo round trip works, and
    /// return the banner (or the connect error).
    pub fn tcp_banner(&self, addr: &str) -> std::io::Result<String> {
        let addr: SocketAddr = addr.parse().expect("socket address");
        self.enter(move || tcp_banner(addr))
    }

    /// Send one UDP datagram from inside this namespace to `addr` and return
    /// the backend's answer (its banner line).
    pub fn udp_banner(&self, addr: &str) -> std::io::Result<String> {
        let addr: SocketAddr = addr.parse().expect("socket address");
        self.enter(move || {
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            };
            let sock = std::net::UdpSocket::bind(bind)?;
            sock.set_read_timeout(Some(Duration::from_secs(3)))?;
            sock.send_to(b"hello\n", addr)?;
            let mut buf = [0u8; 512];
            let n = retry_eintr(|| sock.recv(&mut buf))?;
            Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
        })
    }

    /// `nft list table inet lowport` inside, or None when there is no such table.
    pub fn nft_table(&self) -> Option<String> {
        let out = self.run("nft", &["list", "table", "inet", "lowport"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Read a sysctl inside this namespace.
    pub fn sysctl(&self, name: &str) -> String {
        self.ok("sysctl", &["-n", name]).trim().to_owned()
    }
}

impl Netns {
    /// Give commands run inside (`ip netns exec`) their own copy of
    /// /etc/FILE: `ip netns exec` mounts /etc/netns/NAME/FILE over it.
    /// Removed with the namespace.
    #[allow(dead_code)] // not every test binary uses it
    pub fn etc_file(&self, file: &str, text: &str) {
        if !Path::new("/etc/netns").exists() {
            MADE_ETC_NETNS.store(true, Ordering::SeqCst);
        }
        let dir = Path::new("/etc/netns").join(&self.name);
        std::fs::create_dir_all(&dir).expect("make /etc/netns/NAME");
        std::fs::write(dir.join(file), text).expect("write the namespace's /etc file");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
        // /etc/netns itself goes too if this process made it and no other
        // namespace's files are left in it (remove_dir fails on a non-empty
        // directory).
        if MADE_ETC_NETNS.load(Ordering::SeqCst) {
            let _ = std::fs::remove_dir("/etc/netns");
        }
        state_dir_users(-1);
    }
}

/// Run one blocking socket call again for as long as it fails with EINTR.
/// A read with a timeout (SO_RCVTIMEO) is never restarted by the kernel:
/// it fails with EINTR whenever its thread is interrupted, even with no
/// signal handler (signal(7): after a stop and continue, or while the task
/// is frozen), and that says nothing about the connection.
pub fn retry_eintr<T>(mut call: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// This test process created /etc/netns (it was not there before).
static MADE_ETC_NETNS: AtomicBool = AtomicBool::new(false);

/// `from` reaches the test backend listening on `backend_port` through
/// `addr`, and (when given) the backend saw the client's real address.
pub fn assert_reaches(from: &Netns, addr: &str, backend_port: u16, client_ip: Option<&str>) {
    let banner = from
        .tcp_banner(addr)
        .unwrap_or_else(|e| panic!("{} -> {addr}: {e}", from.name));
    assert!(
        banner.contains(&format!(":{backend_port} peer ")),
        "{addr} reached the wrong server: {banner}"
    );
    if let Some(ip) = client_ip {
        // v4 clients are v4-mapped when the backend listens on [::].
        assert!(
            banner.contains(&format!("peer {ip}:"))
                || banner.contains(&format!("peer [::ffff:{ip}]:"))
                || banner.contains(&format!("peer [{ip}]:")),
            "{addr}: backend saw the wrong client address: {banner}"
        );
    }
}

/// Connect, read the banner, check an echo round trip.
pub fn tcp_banner(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut banner = String::new();
    reader.read_line(&mut banner)?;
    s.write_all(b"ping\n")?;
    let mut echo = String::new();
    reader.read_line(&mut echo)?;
    assert_eq!(echo, "ping\n", "echo through {addr}");
    s.shutdown(std::net::Shutdown::Write)?;
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest)?;
    Ok(banner.trim().to_owned())
}

/// A veth pair with one end in each namespace; returns the ends' names.
fn veth(x: &Netns, y: &Netns) -> (String, String) {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let (a, b) = (
        format!("lpa{}x{}", std::process::id() % 100000, n),
        format!("lpb{}x{}", std::process::id() % 100000, n),
    );
    sh(
        "ip",
        &[
            "link", "add", &a, "netns", &x.name, "type", "veth", "peer", "name", &b, "netns",
            &y.name,
        ],
    );
    (a, b)
}

/// Two namespaces joined by a veth pair: `host` (the machine lowport runs
/// on) and `remote` (another machine on its LAN), with IPv4 and IPv6.
pub struct Lan {
    pub host: Netns,
    pub remote: Netns,
}

impl Lan {
    pub const HOST_V4: &'static str = "10.231.0.1";
    pub const REMOTE_V4: &'static str = "10.231.0.2";
    pub const HOST_V6: &'static str = "fd00:231::1";
    pub const REMOTE_V6: &'static str = "fd00:231::2";

    /// Make both namespaces and link them. The remote routes everything
    /// (including 127.0.0.0/8, as a hostile neighbour might) to the host.
    pub fn new(tag: &str) -> Lan {
        let host = Netns::new(&format!("{tag}h"));
        let remote = Netns::new(&format!("{tag}r"));
        let (a, b) = veth(&host, &remote);
        for (ns, dev, v4, v6) in [
            (&host, &a, Self::HOST_V4, Self::HOST_V6),
            (&remote, &b, Self::REMOTE_V4, Self::REMOTE_V6),
        ] {
            ns.ok("ip", &["link", "set", dev, "name", "eth0"]);
            ns.ok("ip", &["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            ns.ok(
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            ns.ok("ip", &["link", "set", "eth0", "up"]);
        }
        Lan { host, remote }
    }

    /// A third host, `upstream`, on a second link from the host
    /// (10.232.0.1 on the host, 10.232.0.2 upstream), with no route back to
    /// the remote's LAN: only masquerade on the host makes replies work.
    pub fn add_upstream(&self, tag: &str) -> Netns {
        let upstream = Netns::new(tag);
        let (a, b) = veth(&self.host, &upstream);
        for (ns, dev, v4) in [
            (&self.host, &a, "10.232.0.1"),
            (&upstream, &b, "10.232.0.2"),
        ] {
            ns.ok("ip", &["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ok("ip", &["link", "set", dev, "up"]);
        }
        upstream
    }

    /// Make the remote a hostile neighbour that routes 127.0.0.0/8 to the
    /// host. Its own 127.0.0.1 must go (address and local routes), or it
    /// would answer itself and never send anything to the host.
    pub fn make_remote_route_loopback_to_host(&self) {
        self.remote
            .ok("sysctl", &["-qw", "net.ipv4.conf.all.route_localnet=1"]);
        self.remote
            .ok("ip", &["addr", "del", "127.0.0.1/8", "dev", "lo"]);
        self.remote.ok(
            "ip",
            &[
                "route",
                "add",
                "127.0.0.0/8",
                "via",
                Self::HOST_V4,
                "dev",
                "eth0",
            ],
        );
    }

    /// From the remote, try the host's `127.0.0.1:port` directly (after
    /// [`Lan::make_remote_route_loopback_to_host`]).
    pub fn remote_connects_to_host_loopback(&self, port: u16) -> std::io::Result<()> {
        let direct = SocketAddr::from(([127, 0, 0, 1], port));
        self.remote
            .enter(move || TcpStream::connect_timeout(&direct, Duration::from_secs(1)).map(|_| ()))
    }
}

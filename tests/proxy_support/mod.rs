//! Helpers for the proxy tests: run the real `lowport proxy` inside a test
//! namespace as `nobody`, read its log as events, and move verifiable
//! pseudo-random bytes through it.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::{lowport_bin, retry_eintr, Netns};

/// Run `f` on a new thread that lives in network namespace `ns`.
pub fn spawn_in<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            enter_netns(&path);
            f()
        })
        .expect("spawn thread")
}

/// Move the calling thread into the namespace at `path`.
pub fn enter_netns(path: &str) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open netns");
    // SAFETY: valid namespace fd for the duration of the call; affects this thread only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Raise this test process's soft fd limit to the hard limit (the tests
/// hold thousands of sockets).
pub fn raise_nofile() {
    // SAFETY: plain rlimit calls on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

static FILES: AtomicU64 = AtomicU64::new(0);

/// A temporary directory readable by everyone (nobody reads configs
/// there), removed with everything in it when dropped — also when the test
/// fails.
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new [`TempDir`]; its name says which test made it.
pub fn temp_dir(tag: &str) -> TempDir {
    let n = FILES.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("lp-{tag}-{}-{n}", std::process::id()));
    // create_dir, not create_dir_all: a directory someone planted under
    // this name is not ours to use.
    std::fs::create_dir(&dir).expect("mkdir");
    set_mode(&dir, 0o755);
    TempDir(dir)
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Write a config file readable by nobody.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("lowport.yaml");
    std::fs::write(&path, yaml).expect("write config");
    set_mode(&path, 0o644);
    path
}

/// A running `lowport proxy`; killed on drop.
pub struct Proxy {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// How to start the proxy process.
pub struct Launch<'a> {
    pub ns: &'a Netns,
    pub config: &'a Path,
    /// Run as this user through setpriv (None: as the test's user, root).
    pub user: Option<&'a str>,
    pub binary: PathBuf,
    /// Wrap in a command (e.g. prlimit, systemd-socket-activate), before setpriv.
    pub wrapper: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl<'a> Launch<'a> {
    pub fn new(ns: &'a Netns, config: &'a Path) -> Launch<'a> {
        Launch {
            ns,
            config,
            user: Some("nobody"),
            binary: crate::common::runnable_by_anyone(&lowport_bin()),
            wrapper: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Start it, and wait for the "listening" start-up line.
    pub fn start(self) -> Proxy {
        let p = self.spawn();
        p.expect_line("lowport proxy listening", Duration::from_secs(10));
        p
    }

    /// Start it without waiting.
    pub fn spawn(self) -> Proxy {
        let mut cmd = self.ns.command(
            self.wrapper
                .first()
                .map_or_else(|| "setpriv".to_owned(), |w| w.to_owned()),
        );
        if self.wrapper.len() > 1 {
            cmd.args(&self.wrapper[1..]);
        }
        if !self.wrapper.is_empty() {
            cmd.arg("setpriv");
        }
        match self.user {
            Some(user) => {
                let group = if user == "nobody" { "nogroup" } else { user };
                cmd.args([
                    &format!("--reuid={user}"),
                    &format!("--regid={group}"),
                    "--clear-groups",
                ]);
            }
            None => {
                cmd.arg("--"); // setpriv with no changes just execs
            }
        }
        cmd.arg(&self.binary)
            .arg("-vv")
            .arg("-c")
            .arg(self.config)
            .arg("proxy")
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "debug")
            // Only `rules` reads it, and a binary with a file capability
            // refuses every path from the environment.
            .env_remove("LOWPORT_STATE_DIR")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start lowport proxy");
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for stream in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
            let tx = tx.clone();
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let line = strip_ansi(&line);
                    if std::env::var_os("LOWPORT_TEST_ECHO").is_some() {
                        eprintln!("proxy: {line}");
                    }
                    log.lock().expect("log").push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        Proxy {
            child,
            lines: rx,
            log,
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c2 in chars.by_ref() {
                if c2.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Proxy {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for a log line containing `needle`; panics with the log on timeout.
    pub fn expect_line(&self, needle: &str, timeout: Duration) -> String {
        match self.wait_line(needle, timeout) {
            Some(l) => l,
            None => panic!(
                "no log line containing {needle:?} within {timeout:?}; log:\n{}",
                self.log_text()
            ),
        }
    }

    /// Wait for a log line containing `needle` (new lines only).
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill on our own child's pid.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Wait for the process to exit within `timeout`; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// utime + stime of the proxy, in clock ticks, from /proc/PID/stat.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the ")" of comm: state is field 3; utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
    }

    /// The proxy's /proc/PID/status.
    pub fn status(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status")
    }

    /// How many of the proxy's fds are pipes.
    pub fn pipe_fds(&self) -> usize {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return 0;
        };
        dir.filter_map(Result::ok)
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|t| t.to_string_lossy().starts_with("pipe:"))
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Deterministic pseudo-random bytes: byte `i` of stream `seed` can be
/// computed on its own, so both ends can check what they receive.
pub fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = offset + i as u64;
        let mut x = (pos / 8)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(seed.wrapping_mul(0xD1B5_4A32_D192_ED03));
        x ^= x >> 29;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 32;
        *b = (x >> ((pos % 8) * 8)) as u8;
    }
}

/// A small xorshift for random write sizes.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Write `len` bytes of stream `seed` in random-sized writes (1 B .. 256 KiB).
pub fn send_pattern(s: &mut TcpStream, seed: u64, len: u64) -> std::io::Result<()> {
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < len {
        let size = match rng.below(4) {
            0 => 1 + rng.below(16),
            1 => 1 + rng.below(4096),
            _ => 1 + rng.below(256 * 1024),
        }
        .min(len - sent) as usize;
        pattern(seed, sent, &mut buf[..size]);
        s.write_all(&buf[..size])?;
        sent += size as u64;
    }
    Ok(())
}

/// Read until EOF and check every byte against stream `seed`; returns the
/// number of bytes read. A mismatch is an error naming the offset.
pub fn recv_pattern(s: &mut TcpStream, seed: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut want = vec![0u8; 128 * 1024];
    let mut got = 0u64;
    loop {
        let n = read_some(s, &mut buf)?;
        if n == 0 {
            return Ok(got);
        }
        pattern(seed, got, &mut want[..n]);
        if buf[..n] != want[..n] {
            let i = buf[..n]
                .iter()
                .zip(&want[..n])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(std::io::Error::other(format!(
                "stream {seed}: byte {} differs",
                got + i as u64
            )));
        }
        got += n as u64;
    }
}

/// The "exchange" protocol used by [`exchange_server`] and [`exchange`]:
/// the client sends an 8-byte id, a u64 request length and a u64 response
/// length, then the request bytes (stream `id*2`) and a FIN. The server
/// checks every byte, then sends the response (stream `id*2+1`) and closes.
/// Each side has half-closed while the other still sends: half-close is
/// exercised in both directions on every connection.
pub fn exchange(addr: SocketAddr, id: u64, request: u64, response: u64) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head = Vec::new();
    head.extend_from_slice(&id.to_be_bytes());
    head.extend_from_slice(&request.to_be_bytes());
    head.extend_from_slice(&response.to_be_bytes());
    s.write_all(&head)?;
    send_pattern(&mut s, id * 2, request)?;
    s.shutdown(Shutdown::Write)?;
    let got = recv_pattern(&mut s, id * 2 + 1)?;
    if got != response {
        return Err(std::io::Error::other(format!(
            "connection {id}: got {got} of {response} response bytes"
        )));
    }
    Ok(())
}

/// Counters of an exchange server.
#[derive(Default)]
pub struct ServerStats {
    pub accepted: AtomicU64,
    pub verified: AtomicU64,
    pub failures: Mutex<Vec<String>>,
}

/// Serve the exchange protocol on `listener`, one thread per connection.
/// `gate`, when given, is waited on before each connection reads its request
/// (to make the proxy hold data in flight).
pub fn exchange_server(
    ns: &Netns,
    addr: &str,
    rcvbuf: Option<usize>,
    gate: Option<Arc<Gate>>,
) -> Arc<ServerStats> {
    let stats = Arc::new(ServerStats::default());
    let addr: SocketAddr = addr.parse().expect("addr");
    let st = Arc::clone(&stats);
    let (tx, rx) = mpsc::channel();
    spawn_in(ns, move || {
        let listener = match rcvbuf {
            None => TcpListener::bind(addr).expect("bind exchange server"),
            Some(size) => {
                let s = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    None,
                )
                .expect("socket");
                s.set_reuse_address(true).expect("reuse");
                s.set_recv_buffer_size(size).expect("rcvbuf");
                s.bind(&addr.into()).expect("bind exchange server");
                s.listen(4096).expect("listen");
                s.into()
            }
        };
        tx.send(()).expect("ready");
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            st.accepted.fetch_add(1, Ordering::SeqCst);
            let st = Arc::clone(&st);
            let gate = gate.clone();
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || {
                    if let Some(g) = gate {
                        g.wait();
                    }
                    match serve_exchange(&mut conn) {
                        Ok(()) => {
                            st.verified.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => st.failures.lock().expect("lock").push(e.to_string()),
                    }
                })
                .expect("spawn");
        }
    });
    rx.recv().expect("exchange server started");
    stats
}

fn serve_exchange(s: &mut TcpStream) -> std::io::Result<()> {
    let mut head = [0u8; 24];
    s.read_exact(&mut head)?;
    let word = |i: usize| u64::from_be_bytes(head[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let (id, request, response) = (word(0), word(1), word(2));
    let got = recv_pattern(s, id * 2)?;
    if got != request {
        return Err(std::io::Error::other(format!(
            "connection {id}: server got {got} of {request} request bytes"
        )));
    }
    send_pattern(s, id * 2 + 1, response)?;
    s.shutdown(Shutdown::Write)?;
    Ok(())
}

/// A one-shot gate: threads wait until it is opened.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Gate {
    pub fn wait(&self) {
        let mut open = self.open.lock().expect("gate");
        while !*open {
            open = self.cv.wait(open).expect("gate");
        }
    }
    pub fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.cv.notify_all();
    }
}

/// One read(2), again while it comes back EINTR ([`retry_eintr`]).
pub fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    retry_eintr(|| s.read(buf))
}

/// The relay ends the connection (a FIN or a reset) within `within`;
/// anything else (data, a timeout) fails the test.
pub fn expect_closed(c: &mut TcpStream, within: Duration) {
    c.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 16];
    match read_some(c, &mut buf) {
        Ok(0) => {}
        Err(e) if is_reset(&e) => {}
        other => panic!("expected a close, got {other:?}"),
    }
}

/// Is this error a connection reset?
pub fn is_reset(e: &std::io::Error) -> bool {
    e.kind() == ErrorKind::ConnectionReset
}

/// Start a plain echo server (no banner) in `ns`; echoes until EOF, then FIN.
pub fn echo_server(ns: &Netns, addr: &str) {
    let addr: SocketAddr = addr.parse().expect("addr");
    let (tx, rx) = mpsc::channel();
    spawn_in(ns, move || {
        let listener = TcpListener::bind(addr).expect("bind echo server");
        tx.send(()).expect("ready");
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16384];
                loop {
                    match read_some(&mut conn, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = conn.shutdown(Shutdown::Write);
            });
        }
    });
    rx.recv().expect("echo server started");
}

/// A backend that hands each accepted socket to the test.
pub fn held_backend(ns: &Netns, addr: &str) -> mpsc::Receiver<TcpStream> {
    let addr: SocketAddr = addr.parse().expect("addr");
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    spawn_in(ns, move || {
        let listener = TcpListener::bind(addr).expect("bind backend");
        ready_tx.send(()).expect("ready");
        for conn in listener.incoming().map_while(Result::ok) {
            if tx.send(conn).is_err() {
                return;
            }
        }
    });
    ready_rx.recv().expect("backend started");
    rx
}

/// Connect from inside `ns` (the calling thread must not be in it: a
/// helper thread does the connecting and returns the socket).
pub fn connect_in(ns: &Netns, addr: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = addr.parse().expect("addr");
    let path = format!("/run/netns/{}", ns.name);
    std::thread::spawn(move || {
        enter_netns(&path);
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
    .join()
    .expect("connect thread")
}

/// Connect to `addr` in `ns` where the proxy is expected to end the
/// connection: None when its reset already beat connect()'s own completion
/// check (a loaded machine can delay the client thread that long).
pub fn connect_or_reset(ns: &Netns, addr: &str) -> Option<TcpStream> {
    match connect_in(ns, addr) {
        Ok(c) => Some(c),
        Err(e) if is_reset(&e) => None,
        Err(e) => panic!("connect to {addr}: {e}"),
    }
}

/// Connect to `addr` in `ns` and expect the connection ended (a FIN or a
/// reset) within `within`.
pub fn expect_closed_in(ns: &Netns, addr: &str, within: Duration) {
    if let Some(mut c) = connect_or_reset(ns, addr) {
        expect_closed(&mut c, within);
    }
}

/// One echo round trip on an open connection.
pub fn round_trip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    if back != msg {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// Is tool `cmd` installed? Outside CI a missing tool skips `test` with a
/// printed reason; under `CI=true` (which installs it) it fails the test.
pub fn have_tool(cmd: &str, test: &str) -> bool {
    if have(cmd) {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{test}: {cmd} missing under CI (scripts/setup-debian --test installs it)"
    );
    eprintln!("SKIPPED {test}: {cmd} missing");
    false
}

/// Does `lowport` accept this command (used to skip tests cleanly when a
/// tool is missing outside CI)?
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The proxy's UDP counters, from the line SIGUSR1 makes it log.
pub fn udp_counters(proxy: &Proxy) -> std::collections::HashMap<String, u64> {
    proxy.signal(libc::SIGUSR1);
    let line = proxy.expect_line("udp counters (SIGUSR1)", std::time::Duration::from_secs(10));
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

//! Long runs of `lowport proxy` (the real binary, as `nobody`, in a test
//! namespace), not part of the ordinary suite: both are `#[ignore]`d.
//!
//! - `stress_resetting_backend`: many clients against a backend that resets
//!   connections at random (the load under which stale epoll events once
//!   made the relay thread spin), for `LOWPORT_STRESS_SECS` (default 60);
//!   afterwards the proxy must be idle (no spinning) and still serve.
//! - `soak`: mixed traffic with every byte checked, SIGHUP reloads and
//!   backend restarts, for `LOWPORT_SOAK_SECS` (default 600); afterwards
//!   the proxy's fds are back to their baseline, and the figures are
//!   printed.
//!
//! ```sh
//! scripts/soak 10        # the soak, 10 minutes
//! sudo LOWPORT_STRESS_SECS=120 cargo test --release --test soak -- --ignored --nocapture stress
//! ```

mod common;
mod proxy_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{require_root, Netns};
use proxy_support::*;

fn seconds(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// The proxy's open fds other than pipes, its pipe fds (the pipe pool keeps
/// up to 80 idle pipes for reuse) and its resident memory (kB).
fn fds_and_rss(proxy: &Proxy) -> (usize, usize, u64) {
    let all = std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    let pipes = proxy.pipe_fds();
    let rss = proxy
        .status()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (all - pipes, pipes, rss)
}

/// A counter of the last SIGUSR1 line.
fn counter(proxy: &Proxy, name: &str) -> u64 {
    proxy.signal(libc::SIGUSR1);
    let line = proxy.expect_line("counters (SIGUSR1)", Duration::from_secs(10));
    line.split(&format!("{name}="))
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// A backend that can be killed (every connection reset, the listener
/// closed) and started again, serving the exchange protocol of
/// proxy_support (every request byte checked, a pattern response sent).
/// With `reset_odds` n > 0, one connection in n is reset at random instead
/// of served.
struct Backend {
    addr: SocketAddr,
    ns_path: String,
    running: Arc<AtomicBool>,
    /// Bumped by each kill: connections of an earlier epoch reset themselves.
    epoch: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
    reset_odds: u64,
    pub verified: Arc<AtomicU64>,
    pub corrupted: Arc<AtomicU64>,
    pub bytes: Arc<AtomicU64>,
}

impl Backend {
    fn new(ns: &Netns, addr: &str, reset_odds: u64) -> Backend {
        let mut b = Backend {
            addr: addr.parse().expect("addr"),
            ns_path: format!("/run/netns/{}", ns.name),
            running: Arc::new(AtomicBool::new(false)),
            epoch: Arc::default(),
            thread: None,
            reset_odds,
            verified: Arc::default(),
            corrupted: Arc::default(),
            bytes: Arc::default(),
        };
        b.start();
        b
    }

    fn start(&mut self) {
        let (addr, path) = (self.addr, self.ns_path.clone());
        let running = Arc::clone(&self.running);
        let epoch = Arc::clone(&self.epoch);
        let (verified, corrupted, bytes) = (
            Arc::clone(&self.verified),
            Arc::clone(&self.corrupted),
            Arc::clone(&self.bytes),
        );
        let odds = self.reset_odds;
        running.store(true, Ordering::SeqCst);
        let (tx, rx) = std::sync::mpsc::channel();
        self.thread = Some(std::thread::spawn(move || {
            enter_netns(&path);
            let listener = std::net::TcpListener::bind(addr).expect("bind backend");
            listener.set_nonblocking(true).expect("nonblocking");
            tx.send(()).expect("ready");
            let mut rng = Rng(0x5eed_1234 ^ u64::from(addr.port()));
            while running.load(Ordering::SeqCst) {
                let conn = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = conn.set_nonblocking(false);
                let reset_after = (odds > 0 && rng.below(odds) == 0).then(|| rng.below(64 * 1024));
                let counts = Counts {
                    verified: Arc::clone(&verified),
                    corrupted: Arc::clone(&corrupted),
                    bytes: Arc::clone(&bytes),
                    epoch: Arc::clone(&epoch),
                    born: epoch.load(Ordering::SeqCst),
                };
                let _ = std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let s = conn;
                        serve(&s, reset_after, &counts);
                        if counts.killed() {
                            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        }
                    });
            }
        }));
        rx.recv().expect("backend started");
    }

    /// Reset every connection and close the listener, as a backend that
    /// crashed.
    fn kill(&mut self) {
        self.running.store(false, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a backend connection counts, and how it learns of a kill.
struct Counts {
    verified: Arc<AtomicU64>,
    corrupted: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    epoch: Arc<AtomicU64>,
    born: u64,
}

impl Counts {
    fn killed(&self) -> bool {
        self.epoch.load(Ordering::SeqCst) != self.born
    }
}

/// One connection of the exchange protocol (proxy_support's `exchange`);
/// with `reset_after`, read up to that many bytes and reset instead. Reads
/// wake every 100 ms to notice a kill; the caller then resets.
fn serve(mut s: &TcpStream, reset_after: Option<u64>, c: &Counts) {
    let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    // Read exactly `buf.len()` bytes, or fewer at EOF; None: killed or failed.
    let read_full = |s: &mut &TcpStream, buf: &mut [u8]| -> Option<usize> {
        let mut got = 0;
        let mut idle = 0;
        while got < buf.len() {
            if c.killed() {
                return None;
            }
            match s.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    idle = 0;
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    idle += 1;
                    if idle > 1200 {
                        return None; // two minutes without a byte
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        Some(got)
    };
    if let Some(n) = reset_after {
        if n % 2 == 0 {
            // Reset after a moment, whatever the client is doing: its FIN
            // and the reset then reach the proxy in one batch of events.
            std::thread::sleep(Duration::from_micros(n % 2000));
        } else {
            let n = (n as usize).min(buf.len());
            let _ = read_full(&mut s, &mut buf[..n]);
        }
        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        return;
    }
    let mut head = [0u8; 24];
    if read_full(&mut s, &mut head) != Some(24) {
        return;
    }
    let word = |i: usize| u64::from_be_bytes(head[i * 8..i * 8 + 8].try_into().expect("8"));
    let (id, request, response) = (word(0), word(1), word(2));
    let mut got = 0u64;
    loop {
        let Some(n) = read_full(&mut s, &mut buf) else {
            return;
        };
        if n == 0 {
            break;
        }
        pattern(id * 2, got, &mut want[..n]);
        if buf[..n] != want[..n] {
            eprintln!("backend: stream {} differs near byte {got}", id * 2);
            c.corrupted.fetch_add(1, Ordering::Relaxed);
            return;
        }
        got += n as u64;
        if n < buf.len() {
            break;
        }
    }
    if got != request {
        return; // cut short: the client was reset (it counts that)
    }
    c.bytes.fetch_add(got, Ordering::Relaxed);
    let mut sent = 0u64;
    while sent < response {
        if c.killed() {
            return;
        }
        let n = (response - sent).min(buf.len() as u64) as usize;
        pattern(id * 2 + 1, sent, &mut buf[..n]);
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
        sent += n as u64;
    }
    if s.shutdown(Shutdown::Write).is_ok() {
        c.verified.fetch_add(1, Ordering::Relaxed);
        // Wait for the client's close, so the FIN is not raced by a reset.
        let mut rest = [0u8; 16];
        let _ = read_full(&mut s, &mut rest);
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    connections: AtomicU64,
    ok: AtomicU64,
    bytes: AtomicU64,
    corrupted: AtomicU64,
    resets: AtomicU64,
    short_clean: AtomicU64,
    other: AtomicU64,
}

impl Tally {
    fn record(&self, r: std::io::Result<()>, request: u64, response: u64) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(request + response, Ordering::Relaxed);
            }
            Err(e) if e.to_string().contains("differs") => {
                eprintln!("client: {e}");
                self.corrupted.fetch_add(1, Ordering::Relaxed);
            }
            // ENOTCONN: shutdown(2) after a reset.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::NotConnected
                ) =>
            {
                self.resets.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.to_string().contains(" of ") => {
                // A stream that ended with a FIN before all its bytes: a
                // lost tail that looked complete.
                eprintln!("client: {e}");
                self.short_clean.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                eprintln!("client: {e}");
                self.other.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Client threads in `ns` running exchanges to `addr` until `stop`; sizes
/// from a few bytes to `max` (both ways), each thread its own ids.
fn clients(
    ns: &Netns,
    addr: &str,
    threads: u64,
    max: u64,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<std::thread::JoinHandle<()>> {
    let addr: SocketAddr = addr.parse().expect("addr");
    (0..threads)
        .map(|t| {
            let (stop, tally) = (Arc::clone(stop), Arc::clone(tally));
            spawn_in(ns, move || {
                let mut rng = Rng(0x9e37_79b9 + t);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let size = |rng: &mut Rng| match rng.below(10) {
                        0..=5 => rng.below(4096),
                        6..=8 => rng.below(256 * 1024),
                        _ => rng.below(max),
                    };
                    let (request, response) = (size(&mut rng), size(&mut rng));
                    let id = (t << 40) | n;
                    n += 1;
                    tally.record(exchange(addr, id, request, response), request, response);
                }
            })
        })
        .collect()
}

fn config(extra_port: bool, idle: &str) -> String {
    let mut c =
        "mappings:\n  - listen: 9080\n    to: 8080\n  - listen: 9081\n    to: 8081\n".to_owned();
    if extra_port {
        c.push_str("  - listen: 9082\n    to: 8081\n");
    }
    c.push_str(&format!(
        "proxy:\n  idle_timeout: {idle}\n  fin_timeout: 60s\n"
    ));
    c
}

/// Client threads in `ns` that send a few bytes, half-close after a random
/// moment (under 2 ms) and read to the end, until `stop`: their FINs race
/// the backend's resets, so both come to the proxy in one batch of events.
fn racing_clients(
    ns: &Netns,
    addr: &str,
    threads: u64,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<std::thread::JoinHandle<()>> {
    let addr: SocketAddr = addr.parse().expect("addr");
    (0..threads)
        .map(|t| {
            let (stop, tally) = (Arc::clone(stop), Arc::clone(tally));
            spawn_in(ns, move || {
                let mut rng = Rng(0x7f4a_7c15 + t);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // An exchange (proxy_support) of 100 request bytes and
                    // 100 response bytes, so a backend that does not reset
                    // serves it.
                    let id = (1 << 62) | (t << 40) | n;
                    n += 1;
                    let mut request = Vec::with_capacity(124);
                    for word in [id, 100, 100] {
                        request.extend_from_slice(&word.to_be_bytes());
                    }
                    let mut body = [0u8; 100];
                    pattern(id * 2, 0, &mut body);
                    request.extend_from_slice(&body);
                    let r = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
                        s.set_read_timeout(Some(Duration::from_secs(30)))?;
                        s.write_all(&request)?;
                        std::thread::sleep(Duration::from_micros(rng.below(2000)));
                        s.shutdown(Shutdown::Write)?;
                        let mut sink = [0u8; 4096];
                        while read_some(&mut s, &mut sink)? > 0 {}
                        Ok(())
                    })();
                    tally.connections.fetch_add(1, Ordering::Relaxed);
                    match r {
                        Ok(()) => tally.ok.fetch_add(1, Ordering::Relaxed),
                        Err(e)
                            if e.kind() == ErrorKind::TimedOut
                                || e.kind() == ErrorKind::WouldBlock =>
                        {
                            eprintln!("racing client: {e}");
                            tally.other.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => tally.resets.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect()
}

/// Many clients against a backend that resets one connection in two at a
/// random point (half of the clients half-closing at that moment), for LOWPORT_STRESS_SECS: the relay thread must never spin
/// (stale events once marked a reused slot read-closed and it called
/// recvfrom forever), and a second mapping must keep serving throughout.
#[test]
#[ignore = "long: run with --ignored (LOWPORT_STRESS_SECS, default 60)"]
fn stress_resetting_backend() {
    if !require_root("stress_resetting_backend") {
        return;
    }
    raise_nofile();
    let duration = seconds("LOWPORT_STRESS_SECS", 60);
    let ns = Netns::new("stress");
    let _resetting = Backend::new(&ns, "127.0.0.1:8080", 2);
    let steady = Backend::new(&ns, "127.0.0.1:8081", 0);
    let dir = temp_dir("stress");
    let cfg = write_config(&dir, &config(false, "10m"));
    // At the lowest priority the proxy gets less CPU than its clients, as
    // on a busy host: each epoll_wait then returns a long batch of events,
    // where an ended connection's leftovers meet a newcomer in its slot.
    let mut launch = Launch::new(&ns, &cfg);
    launch.wrapper = vec!["nice".into(), "-n".into(), "19".into()];
    let proxy = launch.start();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut workers = clients(&ns, "127.0.0.1:9080", 16, 1 << 20, &stop, &tally);
    workers.extend(racing_clients(&ns, "127.0.0.1:9080", 48, &stop, &tally));
    // The canary: the other mapping answers all along.
    let start = Instant::now();
    let mut canary_failures = Vec::new();
    let mut canaries = 0;
    while start.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(500));
        canaries += 1;
        let r = ns.enter(|| exchange("127.0.0.1:9081".parse().expect("addr"), 7, 1000, 1000));
        if let Err(e) = r {
            canary_failures.push(format!("{:?}: {e}", start.elapsed()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("client thread");
    }
    // Idle now: the relay thread must be asleep in epoll_wait.
    assert!(
        wait_until(Duration::from_secs(30), || counter(&proxy, "active") == 0),
        "connections left"
    );
    let before = proxy.cpu_ticks();
    std::thread::sleep(Duration::from_secs(3));
    let idle_ticks = proxy.cpu_ticks() - before;
    let mut c = connect_in(&ns, "127.0.0.1:9081").expect("connect after the stress");
    let served_after = c.write_all(&[0; 24]).is_ok();
    eprintln!(
        "STRESS: {:?}, connections {}, completed {}, resets {}, short clean {}, other {}, \
         corrupted {}, canaries {canaries} (failed {}), steady backend verified {}, \
         idle CPU ticks over 3 s afterwards {idle_ticks}",
        duration,
        Tally::get(&tally.connections),
        Tally::get(&tally.ok),
        Tally::get(&tally.resets),
        Tally::get(&tally.short_clean),
        Tally::get(&tally.other),
        Tally::get(&tally.corrupted),
        canary_failures.len(),
        steady.verified.load(Ordering::Relaxed),
    );
    assert!(canary_failures.is_empty(), "{canary_failures:?}");
    assert!(
        idle_ticks <= 30,
        "the proxy spins: {idle_ticks} ticks in 3 s idle"
    );
    assert!(served_after, "not serving after the stress");
    assert_eq!(Tally::get(&tally.corrupted), 0);
    assert!(Tally::get(&tally.ok) > 0, "nothing completed");
}

/// Mixed traffic with every byte checked, for LOWPORT_SOAK_SECS: bulk and
/// small exchanges with half-close both ways, idle connections held all
/// along, a SIGHUP every 5 s (a mapping added and removed, timeouts
/// changed) and the backend killed (every connection reset) and restarted
/// every 30 s. No byte may differ, and once the clients are gone the
/// proxy's fds are back to their baseline; the figures are printed.
#[test]
#[ignore = "long: run with scripts/soak MINUTES (LOWPORT_SOAK_SECS, default 600)"]
fn soak() {
    if !require_root("soak") {
        return;
    }
    raise_nofile();
    let duration = seconds("LOWPORT_SOAK_SECS", 600);
    let ns = Netns::new("soak");
    let mut killed = Backend::new(&ns, "127.0.0.1:8080", 0);
    let steady = Backend::new(&ns, "127.0.0.1:8081", 0);
    let dir = temp_dir("soak");
    let cfg = write_config(&dir, &config(false, "10m"));
    let proxy = Launch::new(&ns, &cfg).start();
    std::thread::sleep(Duration::from_millis(500));
    let (fds_before, pipes_before, rss_before) = fds_and_rss(&proxy);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut workers = clients(&ns, "127.0.0.1:9080", 8, 16 << 20, &stop, &tally);
    workers.extend(clients(&ns, "127.0.0.1:9081", 8, 4 << 20, &stop, &tally));
    let idle: Vec<TcpStream> = (0..50)
        .map(|_| connect_in(&ns, "127.0.0.1:9081").expect("idle connection"))
        .collect();

    let start = Instant::now();
    let (mut reloads, mut kills) = (0u64, 0u64);
    let mut next_kill = Duration::from_secs(30);
    let mut tick = 0u64;
    while start.elapsed() < duration {
        std::thread::sleep(Duration::from_secs(5));
        tick += 1;
        let idle_timeout = if tick % 2 == 0 { "10m" } else { "11m" };
        std::fs::write(&cfg, config(tick % 2 == 1, idle_timeout)).expect("rewrite config");
        proxy.signal(libc::SIGHUP);
        reloads += 1;
        if start.elapsed() >= next_kill {
            killed.kill();
            std::thread::sleep(Duration::from_millis(300));
            killed.start();
            kills += 1;
            next_kill += Duration::from_secs(30);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("client thread");
    }
    drop(idle);
    let settled = wait_until(Duration::from_secs(60), || counter(&proxy, "active") == 0);
    std::fs::write(&cfg, config(false, "10m")).expect("rewrite config");
    proxy.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_secs(1));
    let (fds_after, pipes_after, rss_after) = fds_and_rss(&proxy);
    let reloaded = proxy.log_text().matches("reloaded configuration").count();
    let corrupted = Tally::get(&tally.corrupted)
        + killed.corrupted.load(Ordering::Relaxed)
        + steady.corrupted.load(Ordering::Relaxed);
    eprintln!(
        "SOAK: {:?}; connections {}, completed {}, bytes checked {} ({} by the clients, \
         {} request bytes by the backends), corrupted {corrupted}, resets {}, short clean \
         {}, other errors {}, reloads {reloads} (logged {reloaded}), backend kills {kills}, \
         fds other than pipes {fds_before} -> {fds_after}, pipe fds {pipes_before} -> \
         {pipes_after} (the pool's idle pipes), RSS {rss_before} kB -> {rss_after} kB",
        duration,
        Tally::get(&tally.connections),
        Tally::get(&tally.ok),
        Tally::get(&tally.bytes)
            + killed.bytes.load(Ordering::Relaxed)
            + steady.bytes.load(Ordering::Relaxed),
        Tally::get(&tally.bytes),
        killed.bytes.load(Ordering::Relaxed) + steady.bytes.load(Ordering::Relaxed),
        Tally::get(&tally.resets),
        Tally::get(&tally.short_clean),
        Tally::get(&tally.other),
    );
    assert!(settled, "connections left after the clients ended");
    assert_eq!(corrupted, 0, "corrupted streams");
    assert_eq!(fds_after, fds_before, "fds not back to the baseline");
    assert!(pipes_after <= 2 * (64 + 16), "{pipes_after} pipe fds left");
    assert!(Tally::get(&tally.ok) > 0, "nothing completed");
    assert_eq!(reloaded as u64, reloads + 1, "a reload was not applied");
}

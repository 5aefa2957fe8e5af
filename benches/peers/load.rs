//! The backend (one event loop on CPU 0) and the load generators that
//! measure a row: bulk streams, short connections, keep-alive requests,
//! idle connections, and the half-close and reset checks.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{fd_count, kernel_kib, pss_kib, relay_kernel_kib};
use crate::peers::Peer;

pub(crate) const BACKEND_PORT: u16 = 9000;

/// Bytes the backend received on bulk connections, and how many of them
/// have ended: the bulk figure is counted where the data arrives, and needs
/// no half-close (which some peers do not pass through).
pub(crate) static BULK_BYTES: AtomicU64 = AtomicU64::new(0);
pub(crate) static BULK_DONE: AtomicU64 = AtomicU64::new(0);
pub(crate) const REQ: usize = 64;

/// Backend on CPU 0: one event loop (a current-thread tokio runtime on its
/// own thread), so that serving thousands of connections costs the load
/// generator's core no thread switches. The first byte of a connection
/// picks its job.
/// `B`: sink everything until the client closes, counting it.
/// `R`: answer every REQ-byte request with REQ bytes.
/// `I`: idle; hold the connection until the client closes.
pub(crate) fn start_backend() {
    let listener = TcpListener::bind(("127.0.0.1", BACKEND_PORT)).expect("backend bind");
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("backend runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("backend listener");
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(s));
            }
        });
    });
}

pub(crate) async fn serve(mut s: tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.set_nodelay(true)?;
    let mode = s.read_u8().await?;
    match mode {
        b'B' => {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => BULK_BYTES.fetch_add(n as u64, Ordering::Relaxed),
                };
            }
            BULK_DONE.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        b'H' => {
            // Half-close: count what comes until the client's FIN, then
            // answer with the count (only a relay that passes the FIN on
            // and keeps the other direction open lets it through).
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf).await? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            s.write_all(&total.to_be_bytes()).await?;
            Ok(())
        }
        b'X' => {
            // Reset: answer the first byte with a RST.
            let _ = s.read_u8().await?;
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
            Ok(())
        }
        b'R' => {
            let mut buf = [0u8; REQ];
            loop {
                if s.read_exact(&mut buf).await.is_err() {
                    return Ok(());
                }
                s.write_all(&buf).await?;
            }
        }
        _ => {
            let mut buf = [0u8; 16];
            while s.read(&mut buf).await? > 0 {}
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- load

/// How long a load generator waits on one read or write before it calls the
/// peer broken (a peer that loses a byte would otherwise hang the run).
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn connect(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Bulk: `streams` connections each send for `secs` then close; returns
/// bytes/s as received by the backend, until the last stream ended there.
pub(crate) fn bulk(port: u16, streams: usize, secs: f64) -> std::io::Result<f64> {
    let (bytes0, done0) = (
        BULK_BYTES.load(Ordering::SeqCst),
        BULK_DONE.load(Ordering::SeqCst),
    );
    let start = Instant::now();
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut s = connect(port)?;
                s.write_all(b"B")?;
                let buf = vec![0x5au8; 256 * 1024];
                let end = Instant::now() + Duration::from_secs_f64(secs);
                while Instant::now() < end {
                    s.write_all(&buf)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| std::io::Error::other("bulk thread panicked"))??;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while BULK_DONE.load(Ordering::SeqCst) < done0 + streams as u64 {
        if Instant::now() > deadline {
            return Err(std::io::Error::other(
                "bulk streams did not end at the backend",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let bytes = BULK_BYTES.load(Ordering::SeqCst) - bytes0;
    Ok(bytes as f64 / start.elapsed().as_secs_f64())
}

/// Does the relay pass a half-close through? The client sends, shuts down
/// writing, and must still get the backend's answer.
pub(crate) fn passes_half_close(port: u16) -> Result<(), String> {
    const LEN: usize = 100_000;
    let mut s = connect(port).map_err(|e| e.to_string())?;
    let mut msg = vec![0x33u8; LEN + 1];
    msg[0] = b'H';
    s.write_all(&msg).map_err(|e| e.to_string())?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) if got == (LEN as u64).to_be_bytes() => Ok(()),
        Ok(_) if got.is_empty() => Err("closed without the answer".into()),
        Ok(_) => Err(format!("wrong answer ({} bytes)", got.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Does the relay pass a backend's reset on as a reset, not a clean close?
pub(crate) fn passes_reset(port: u16) -> Result<(), String> {
    let mut s = connect(port).map_err(|e| e.to_string())?;
    s.write_all(b"X!").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    // EINTR says nothing about the connection: read again.
    let read = loop {
        match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Ok(0) => Err("clean close (FIN)".into()),
        Ok(n) => Err(format!("{n} unexpected bytes")),
        Err(e) => Err(e.to_string()),
    }
}

/// Percentile of sorted latencies, in microseconds.
pub(crate) fn p99_us(mut lat: Vec<Duration>) -> f64 {
    if lat.is_empty() {
        return f64::NAN;
    }
    lat.sort_unstable();
    lat[(lat.len() * 99 / 100).min(lat.len() - 1)].as_secs_f64() * 1e6
}

/// Run `workers` copies of `work` as tasks of one event loop on this thread
/// (pinned to CPU 0), each told to stop through the flag, for `secs`; return
/// (operations/s, p99 µs) over every latency recorded. One thread rather
/// than a thread per connection: a load generator that spends more CPU per
/// request than the relay under test measures itself.
pub(crate) fn timed_workers<F>(
    workers: usize,
    secs: f64,
    work: impl Fn(Arc<AtomicBool>) -> F,
) -> std::io::Result<(f64, f64)>
where
    F: std::future::Future<Output = std::io::Result<Vec<Duration>>> + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let all = rt.block_on(async {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let handles: Vec<_> = (0..workers)
                    .map(|_| tokio::task::spawn_local(work(stop.clone())))
                    .collect();
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                stop.store(true, Ordering::Relaxed);
                let mut all = Vec::new();
                for h in handles {
                    all.extend(h.await.map_err(std::io::Error::other)??);
                }
                Ok::<_, std::io::Error>(all)
            })
            .await
    })?;
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    Ok((rate, p99_us(all)))
}

/// One read or write of the load generators, bounded by IO_TIMEOUT and
/// naming a stall for what it is.
pub(crate) async fn io_within<T>(
    what: &str,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(std::io::Error::other(format!(
            "{what} ({e}): the relay lost or held bytes"
        ))),
        Err(_) => Err(std::io::Error::other(format!(
            "{what}: nothing within {IO_TIMEOUT:?}: the relay lost or held bytes"
        ))),
    }
}

pub(crate) async fn connect_async(port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let s = io_within(
        "connect",
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Short connections: each does connect, one request, one answer, close.
/// Returns (connections/s, p99 µs).
pub(crate) fn short_conns(port: u16, workers: usize, secs: f64) -> std::io::Result<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    timed_workers(workers, secs, move |stop| async move {
        let mut lat = Vec::new();
        let mut msg = [0u8; REQ + 1];
        msg[0] = b'R';
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let mut s = connect_async(port).await?;
            io_within("request", s.write_all(&msg)).await?;
            let mut buf = [0u8; REQ];
            io_within("no complete answer", s.read_exact(&mut buf)).await?;
            drop(s);
            lat.push(t.elapsed());
        }
        Ok(lat)
    })
}

/// Keep-alive: `conns` connections doing request/answer ping-pong.
/// Returns (requests/s, p99 µs). The connections open one at a time, each
/// with one round trip, before the ping-pong starts: the figure is about
/// requests on open connections, not a burst of connects (32 at once
/// overflowed redir's listen queue of 10; with SYN cookies in play a
/// client's first byte was then lost — the kernel counted TCPAbortOnData —
/// and the stream went out of step).
pub(crate) fn keepalive(port: u16, conns: usize, secs: f64) -> std::io::Result<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let opening = Arc::new(tokio::sync::Mutex::new(()));
    timed_workers(conns, secs, move |stop| {
        let opening = Arc::clone(&opening);
        async move {
            let req = [7u8; REQ];
            let mut buf = [0u8; REQ];
            let mut s = {
                let _turn = opening.lock().await;
                let mut s = connect_async(port).await?;
                io_within("mode byte", s.write_all(b"R")).await?;
                io_within("request", s.write_all(&req)).await?;
                io_within("no complete answer", s.read_exact(&mut buf)).await?;
                s
            };
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                io_within("request", s.write_all(&req)).await?;
                io_within("no complete answer", s.read_exact(&mut buf)).await?;
                lat.push(t.elapsed());
            }
            Ok(lat)
        }
    })
}

/// Wait (up to a minute) until no orphaned TCP socket is left and the
/// number of TCP sockets has stopped changing for a second: what the last
/// figure closed is freed before memory is read.
pub(crate) fn settle_sockets() {
    let tcp = || {
        let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
        let line = text.lines().find(|l| l.starts_with("TCP:"))?.to_owned();
        let field = |name: &str| -> Option<u64> {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let i = parts.iter().position(|p| *p == name)?;
            parts.get(i + 1)?.parse().ok()
        };
        Some((field("orphan")?, field("alloc")?))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = tcp();
    let mut steady_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = tcp();
        if now != last {
            last = now;
            steady_since = Instant::now();
        } else if now.is_some_and(|(orphan, _)| orphan == 0)
            && steady_since.elapsed() >= Duration::from_secs(1)
        {
            return;
        }
    }
}

/// What `n` idle connections cost, per connection, as deltas against none.
pub(crate) struct Idle {
    /// The relay's PSS, KiB.
    pub(crate) pss: f64,
    /// Kernel memory charged to the relay's cgroup, KiB (`relay_kernel_kib`).
    pub(crate) relay_kernel: Option<f64>,
    /// Machine-wide kernel memory (`kernel_kib`), KiB: includes the
    /// client's and the backend's sockets, and the noise of every other
    /// allocation on the machine.
    pub(crate) machine_kernel: f64,
    pub(crate) fds: f64,
    /// Seconds to open all `n`, one after another. A connect returns once
    /// the kernel has queued the connection for the relay; only a relay
    /// that accepts slower than clients connect fills its listen queue and
    /// makes the next connects wait: what accepting costs a relay that
    /// already holds many connections.
    pub(crate) open_secs: f64,
}

/// Idle connections: open `n`, each sending one byte (so every relay has
/// moved data once), wait, measure.
pub(crate) fn idle(peer: &Peer, n: usize) -> std::io::Result<Idle> {
    let settle = || std::thread::sleep(Duration::from_millis(500));
    settle_sockets();
    let (pss0, fd0, k0, r0) = (
        pss_kib(peer),
        fd_count(peer),
        kernel_kib(),
        relay_kernel_kib(peer),
    );
    let mut conns = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let mut s = connect(peer.port)?;
        s.write_all(b"I")?;
        conns.push(s);
    }
    let open_secs = started.elapsed().as_secs_f64();
    settle();
    let (pss1, fd1, k1, r1) = (
        pss_kib(peer),
        fd_count(peer),
        kernel_kib(),
        relay_kernel_kib(peer),
    );
    drop(conns);
    settle();
    let per = |a: u64, b: u64| (b as f64 - a as f64) / n as f64;
    Ok(Idle {
        pss: per(pss0, pss1),
        relay_kernel: r0.zip(r1).map(|(a, b)| per(a, b)),
        machine_kernel: per(k0, k1),
        fds: (fd1 as f64 - fd0 as f64) / n as f64,
        open_secs,
    })
}

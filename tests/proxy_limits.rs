//! `lowport proxy` at its limits: out of file descriptors (EMFILE) and past
//! the per-user pipe quota, with the real binary running as `nobody`.

mod common;
mod proxy_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{require_root, Netns};
use proxy_support::*;

/// The two tests that hold thousands of sockets in this process (clients
/// and the echo backend's side, about 3000 each) take turns, so that their
/// peaks do not add up against RLIMIT_NOFILE.
static MANY_SOCKETS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn many_sockets() -> std::sync::MutexGuard<'static, ()> {
    // A test that failed while holding the lock does not spoil the others.
    MANY_SOCKETS.lock().unwrap_or_else(|e| e.into_inner())
}

/// With RLIMIT_NOFILE at 48 (prlimit; soft = hard, so the proxy cannot
/// raise it), clients beyond what fits make accept/connect/pipe fail with
/// EMFILE. The proxy backs off instead of spinning (its CPU time over a
/// 2-second window stays small), never loses its listener, leaves the
/// clients it cannot take in the backlog, and serves them once fds are free.
#[test]
fn emfile_backs_off_and_recovers() {
    if !require_root("emfile_backs_off_and_recovers") {
        return;
    }
    raise_nofile();
    let ns = Netns::new("pxmfile");
    echo_server(&ns, "127.0.0.1:8080");
    let dir = temp_dir("emfile");
    let cfg = write_config(&dir, "mappings:\n  - listen: 9080\n    to: 8080\n");
    let mut launch = Launch::new(&ns, &cfg);
    launch.wrapper = vec!["prlimit".into(), "--nofile=48:48".into(), "--".into()];
    let proxy = launch.start();

    // Open connections until the proxy cannot take more; keep them all.
    let mut held = Vec::new();
    for _ in 0..60 {
        if let Ok(c) = connect_in(&ns, "127.0.0.1:9080") {
            held.push(c);
        }
    }
    proxy.expect_line("backing off", Duration::from_secs(10));
    // The first ones were accepted and are served; the rest wait in the
    // backlog (accepting them only to reset them would lose them).
    let mut served = 0;
    for c in held.iter_mut().take(10) {
        if round_trip(c, b"x").is_ok() {
            served += 1;
        }
    }
    assert!(served > 5, "only {served} connections served before EMFILE");

    // The listener stays readable (clients queued): no CPU spin.
    let before = proxy.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let used = proxy.cpu_ticks() - before;
    assert!(
        used <= 20,
        "proxy used {used} ticks of CPU in 2 s while out of fds"
    );

    // Free the others' fds: the last client, queued all along, is served.
    let mut last = held.pop().expect("held connections");
    drop(held);
    round_trip(&mut last, b"waited").unwrap_or_else(|e| {
        panic!(
            "a queued client was not served once fds were free: {e}\n{}",
            proxy.log_text()
        )
    });
    drop(last);
    let ok = wait_until(Duration::from_secs(10), || {
        connect_in(&ns, "127.0.0.1:9080")
            .and_then(|mut c| round_trip(&mut c, b"again"))
            .is_ok()
    });
    assert!(ok, "not serving after fds were freed\n{}", proxy.log_text());
    proxy.expect_line("accepting again", Duration::from_secs(10));
}

/// 1400 connections at once, all moving data, with the proxy as `nobody`:
/// past the per-user pipe quota (fs.pipe-user-pages-soft) new pipes shrink
/// to a page or two, and every byte must still arrive intact. The backend
/// reads nothing until all are connected, so at least 1100 connections
/// hold a pipe with bytes in flight at the same time.
#[test]
fn over_1100_concurrent_connections_past_the_pipe_quota() {
    if !require_root("over_1100_concurrent_connections_past_the_pipe_quota") {
        return;
    }
    let _turn = many_sockets();
    raise_nofile();
    // Some connections' requests fit in socket buffers and hold no pipe at
    // the moment of counting (small exchanges are copied, not spliced), so
    // more connections than pipes are needed to have 1100 pipes in flight.
    const N: u64 = 1400;
    let ns = Netns::new("pxmany");
    // A real network's MTU: on 64 KiB-MTU loopback the proxy's socket send
    // buffers alone would swallow every request and no pipe would be needed.
    ns.ok("ip", &["link", "set", "lo", "mtu", "1500"]);
    let gate = Arc::new(Gate::default());
    let server = exchange_server(&ns, "127.0.0.1:8080", Some(4096), Some(Arc::clone(&gate)));
    let dir = temp_dir("many");
    let cfg = write_config(
        &dir,
        "mappings:\n  - listen: 9080\n    to: 8080\n\
         proxy:\n  max_connections: 5000\n  max_connections_per_client: 5000\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();

    let clients = ns.enter(move || {
        (0..N)
            .map(|i| {
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        exchange(
                            "127.0.0.1:9080".parse().expect("addr"),
                            1000 + i,
                            256 * 1024 + i,
                            64 * 1024 + i,
                        )
                    })
                    .expect("spawn client")
            })
            .collect::<Vec<_>>()
    });
    assert!(
        wait_until(Duration::from_secs(60), || server
            .accepted
            .load(Ordering::SeqCst)
            == N),
        "backend accepted {} of {N}\n{}",
        server.accepted.load(Ordering::SeqCst),
        proxy.log_text()
    );
    // Bytes stuck in flight: the proxy holds a pipe (two fds) per connection.
    let mut peak = 0;
    wait_until(Duration::from_secs(20), || {
        peak = peak.max(proxy.pipe_fds());
        peak >= 2 * 1100
    });
    eprintln!("peak pipes in flight: {}", peak / 2);
    assert!(
        peak >= 2 * 1100,
        "only {} pipes in flight at once; comm {:?} fds {}",
        peak / 2,
        std::fs::read_to_string(format!("/proc/{}/comm", proxy.pid())),
        std::fs::read_dir(format!("/proc/{}/fd", proxy.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    );
    gate.open();
    let failed: Vec<String> = clients
        .into_iter()
        .filter_map(|h| h.join().expect("client thread").err())
        .map(|e| e.to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        wait_until(Duration::from_secs(30), || server
            .verified
            .load(Ordering::SeqCst)
            == N),
        "server verified {} of {N}: {:?}",
        server.verified.load(Ordering::SeqCst),
        server.failures.lock().expect("lock").first()
    );
    let status = proxy.status();
    assert!(status.contains("Uid:\t65534"), "{status}");
}

/// When no pipe can be had (here: RLIMIT_NOFILE leaves room for the
/// connection's two sockets but not for a pipe's two ends), the proxy
/// copies through user space instead — every byte still arrives, in both
/// directions with half-close, and each fallback is counted.
#[test]
fn copy_fallback_without_pipes_is_byte_exact_and_counted() {
    if !require_root("copy_fallback_without_pipes_is_byte_exact_and_counted") {
        return;
    }
    raise_nofile();
    let ns = Netns::new("pxcopy");
    let server = exchange_server(&ns, "127.0.0.1:8080", None, None);
    let dir = temp_dir("copy");
    let cfg = write_config(&dir, "mappings:\n  - listen: 9080\n    to: 8080\n");

    // How many fds does an idle proxy hold? (fds are numbered densely from
    // 0, so the limit is that count plus what one connection needs.)
    let (base, base_pipes) = {
        let proxy = Launch::new(&ns, &cfg).start();
        let fd_dir = format!("/proc/{}/fd", proxy.pid());
        let n = std::fs::read_dir(fd_dir).expect("fd dir").count();
        // stdout and stderr are pipes to this test already.
        (n, proxy.pipe_fds())
    };
    let limit = base + 2;
    let mut launch = Launch::new(&ns, &cfg);
    launch.wrapper = vec![
        "prlimit".into(),
        format!("--nofile={limit}:{limit}"),
        "--".into(),
    ];
    let proxy = launch.start();

    let size = 8 << 20;
    let r = ns.enter(move || exchange("127.0.0.1:9080".parse().expect("addr"), 7, size, size));
    r.unwrap_or_else(|e| panic!("exchange through the copy path: {e}\n{}", proxy.log_text()));
    assert!(
        wait_until(Duration::from_secs(10), || server
            .verified
            .load(Ordering::SeqCst)
            == 1),
        "server did not verify the request: {:?}",
        server.failures.lock().expect("lock")
    );
    proxy.signal(libc::SIGUSR1);
    let line = proxy.expect_line("counters (SIGUSR1)", Duration::from_secs(5));
    let fallbacks: u64 = line
        .split("splice_fallbacks=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no splice_fallbacks in {line}"));
    assert!(
        fallbacks > 0,
        "the copy path was not taken (limit {limit}): {line}"
    );
    assert_eq!(proxy.pipe_fds(), base_pipes, "a pipe was created after all");
}

/// At start the proxy raises its soft RLIMIT_NOFILE to the hard limit
/// (each busy connection needs two sockets and up to four pipe ends).
#[test]
fn soft_fd_limit_is_raised_to_the_hard_limit() {
    if !require_root("soft_fd_limit_is_raised_to_the_hard_limit") {
        return;
    }
    let ns = Netns::new("pxrlim");
    let dir = temp_dir("rlimit");
    let cfg = write_config(&dir, "mappings:\n  - listen: 9080\n    to: 8080\n");
    let mut launch = Launch::new(&ns, &cfg);
    launch.wrapper = vec!["prlimit".into(), "--nofile=256:4096".into(), "--".into()];
    let proxy = launch.start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files line");
    let fields: Vec<&str> = line.split_whitespace().collect();
    // "Max open files <soft> <hard> files"
    assert_eq!(fields[3], "4096", "soft limit not raised: {line}");
    assert_eq!(fields[4], "4096", "{line}");
}

/// A burst of clients past the old fixed backlog (1024) while the proxy
/// does not accept (stopped with SIGSTOP, as a busy proxy, or one that has
/// paused at max_connections, would be): every client completes its
/// handshake in the listen queue, whose length follows
/// `net.core.somaxconn`, and is served once the proxy runs again. With 1024
/// the kernel dropped the SYNs past it and those clients waited a second
/// or more for their retransmission (the benchmark's 3000 idle connections
/// hit it).
#[test]
fn a_burst_past_1024_clients_waits_in_the_listen_queue() {
    if !require_root("a_burst_past_1024_clients_waits_in_the_listen_queue") {
        return;
    }
    const CLIENTS: usize = 1500;
    let _turn = many_sockets();
    raise_nofile();
    let ns = Netns::new("pxqueue");
    ns.ok("sysctl", &["-qw", "net.core.somaxconn=3000"]);
    echo_server(&ns, "127.0.0.1:8080");
    let dir = temp_dir("queue");
    // Every client is 127.0.0.1: past the per-client limit (512 by
    // default) the proxy would reset them.
    let cfg = write_config(
        &dir,
        "mappings:\n  - listen: 9080\n    to: 8080\nproxy:\n  max_connections_per_client: 4096\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();

    // A listening socket's Send-Q in ss is its queue length.
    let listening = ns.ok("ss", &["-ltnH", "sport", "=", ":9080"]);
    let queue: Vec<&str> = listening
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(queue, ["3000"], "listen queue:\n{listening}");

    proxy.signal(libc::SIGSTOP);
    let addr: std::net::SocketAddr = "127.0.0.1:9080".parse().expect("addr");
    let (clients, failed) = ns.enter(move || {
        let mut clients = Vec::with_capacity(CLIENTS);
        for i in 0..CLIENTS {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(c) => clients.push(c),
                Err(e) => return (clients, Some(format!("client {i}: {e}"))),
            }
        }
        (clients, None)
    });
    proxy.signal(libc::SIGCONT);
    assert!(
        failed.is_none(),
        "not every client was queued while the proxy was stopped: {failed:?}"
    );
    for (i, mut c) in clients.into_iter().enumerate() {
        round_trip(&mut c, format!("client {i}").as_bytes())
            .unwrap_or_else(|e| panic!("queued client {i} not served: {e}\n{}", proxy.log_text()));
    }
}

/// Read one counter from a SIGUSR1 counters line.
fn counter(line: &str, name: &str) -> u64 {
    line.split(&format!("{name}="))
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// 300 idle connections from 127.0.0.1 against max_connections_per_client
/// 200: the first 200 are served, each one after them is reset at once
/// (not left in the backlog, where it would hold up everyone behind it)
/// and counted, and other clients (127.0.0.2, ::1) are still served. Before
/// the limit, one address could take all of max_connections.
#[test]
fn one_client_address_cannot_take_every_slot() {
    if !require_root("one_client_address_cannot_take_every_slot") {
        return;
    }
    raise_nofile();
    let ns = Netns::new("pxperclient");
    echo_server(&ns, "127.0.0.1:8080");
    let dir = temp_dir("perclient");
    let cfg = write_config(
        &dir,
        "mappings:\n  - listen: 9080\n    to: \"127.0.0.1:8080\"\n\
         proxy:\n  max_connections: 1000\n  max_connections_per_client: 200\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();
    let addr: std::net::SocketAddr = "127.0.0.1:9080".parse().expect("addr");
    let mut clients = ns.enter(move || {
        (0..300)
            .map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .collect::<Vec<_>>()
    });
    let over = clients.split_off(200);
    let mut clients: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.unwrap_or_else(|e| panic!("client {i}: {e}")))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        round_trip(c, format!("client {i}").as_bytes())
            .unwrap_or_else(|e| panic!("client {i} not served: {e}\n{}", proxy.log_text()));
    }
    for (i, c) in over.into_iter().enumerate() {
        let mut c = match c {
            Ok(c) => c,
            // The reset beat connect()'s own completion check.
            Err(e) if is_reset(&e) => continue,
            Err(e) => panic!("client {}: {e}", 200 + i),
        };
        c.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // Only read: a write would take the reset's error for itself.
        let mut buf = [0u8; 16];
        match read_some(&mut c, &mut buf) {
            Err(e) if is_reset(&e) => {}
            other => panic!("client {}: expected a reset, got {other:?}", 200 + i),
        }
    }
    // Other clients are served: another IPv4 address, and IPv6.
    let other = ns.enter(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        let from: std::net::SocketAddr = "127.0.0.2:0".parse().expect("addr");
        s.bind(&from.into())?;
        let to: std::net::SocketAddr = "127.0.0.1:9080".parse().expect("addr");
        s.connect_timeout(&to.into(), Duration::from_secs(5))?;
        Ok::<_, std::io::Error>(std::net::TcpStream::from(s))
    });
    let mut other = other.expect("connect from 127.0.0.2");
    round_trip(&mut other, b"from another address").expect("127.0.0.2 served");
    let mut v6 = connect_in(&ns, "[::1]:9080").expect("connect from ::1");
    round_trip(&mut v6, b"over IPv6").expect("::1 served");

    proxy.signal(libc::SIGUSR1);
    let line = proxy.expect_line("counters (SIGUSR1)", Duration::from_secs(5));
    assert_eq!(counter(&line, "client_limit_resets"), 100, "{line}");
    assert_eq!(counter(&line, "active"), 202, "{line}");
    let log = proxy.log_text();
    assert!(
        log.contains("max_connections_per_client (200)") && log.contains("client=127.0.0.1"),
        "the limit was not logged:\n{log}"
    );

    // Slots come back as the client's connections end.
    clients.truncate(150);
    let served = wait_until(Duration::from_secs(10), || {
        connect_in(&ns, "127.0.0.1:9080")
            .and_then(|mut c| round_trip(&mut c, b"again"))
            .is_ok()
    });
    assert!(served, "127.0.0.1 not served again\n{}", proxy.log_text());
}

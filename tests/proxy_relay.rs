//! `lowport proxy` relay semantics, with the real binary running as
//! `nobody` inside a throwaway network namespace: byte-exact transfers,
//! half-close, resets, backend failures, timeouts, the connection cap, and
//! IPv6 / IPv4-mapped clients.

mod common;
mod proxy_support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{require_root, Lan, Netns};
use proxy_support::*;

fn config(ns_dir: &std::path::Path, mappings: &str, proxy: &str) -> std::path::PathBuf {
    write_config(ns_dir, &format!("mappings:\n{mappings}proxy:\n{proxy}"))
}

#[test]
fn transfers_are_byte_exact_both_ways() {
    if !require_root("transfers_are_byte_exact_both_ways") {
        return;
    }
    raise_nofile();
    let ns = Netns::new("pxbytes");
    let server = exchange_server(&ns, "127.0.0.1:8080", None, None);
    let dir = temp_dir("bytes");
    let cfg = config(
        &dir,
        "  - listen: 9080\n    to: 127.0.0.1:8080\n",
        "  max_connections: 1000\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();

    // One large connection: 64 MiB each way, random write sizes.
    let big = 64 << 20;
    let r = ns.enter(move || exchange("127.0.0.1:9080".parse().expect("addr"), 1, big, big));
    r.expect("64 MiB exchange");

    // 200 at once, random sizes up to 1 MiB each way (some empty).
    let results = ns.enter(move || {
        let mut rng = Rng(0x5eed);
        let handles: Vec<_> = (0..200u64)
            .map(|i| {
                let (req, resp) = (rng.below(1 << 20), rng.below(1 << 20));
                let req = if i % 50 == 0 { 0 } else { req };
                std::thread::spawn(move || {
                    exchange("127.0.0.1:9080".parse().expect("addr"), 100 + i, req, resp)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect::<Vec<_>>()
    });
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    assert!(
        failed.is_empty(),
        "client failures: {failed:?}\n{}",
        proxy.log_text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || server
            .verified
            .load(std::sync::atomic::Ordering::SeqCst)
            == 201),
        "server verified {} of 201; failures {:?}",
        server.verified.load(std::sync::atomic::Ordering::SeqCst),
        server.failures.lock().expect("lock")
    );
    // SIGUSR1 logs the counters: every byte went through splice.
    proxy.signal(libc::SIGUSR1);
    let line = proxy.expect_line("counters (SIGUSR1)", Duration::from_secs(5));
    assert!(line.contains("splice_fallbacks=0"), "{line}");
    assert!(line.contains("accepted=201"), "{line}");
    let to_backend: u64 = line
        .split("bytes_to_backend=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("bytes_to_backend in the counters line");
    assert!(to_backend >= big, "{line}");
    // Idle connections hold no pipe: the pool keeps at most a few.
    assert!(
        wait_until(Duration::from_secs(5), || proxy.pipe_fds() <= 2 * 64),
        "pipes still open: {}",
        proxy.pipe_fds()
    );
}

/// The backend half-closes first (sends, then FIN) while the client goes on
/// sending: everything the client sends after that still arrives.
#[test]
fn half_close_from_the_backend_side() {
    if !require_root("half_close_from_the_backend_side") {
        return;
    }
    let ns = Netns::new("pxhalf");
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    spawn_in(&ns, move || {
        let l = TcpListener::bind("127.0.0.1:8080").expect("bind");
        ready_tx.send(()).expect("ready");
        let (mut s, _) = l.accept().expect("accept");
        s.write_all(b"bye early\n").expect("write");
        s.shutdown(Shutdown::Write).expect("half-close");
        let r = recv_pattern(&mut s, 77);
        tx.send(r.map_err(|e| e.to_string())).expect("report");
    });
    ready_rx.recv().expect("server up");
    let dir = temp_dir("half");
    let cfg = config(
        &dir,
        "  - listen: 9080\n    to: 8080\n",
        "  fin_timeout: 30s\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();
    let mut c = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .expect("read until the backend's FIN");
    assert_eq!(got, b"bye early\n");
    // Our side is still open for writing: 8 MiB more.
    send_pattern(&mut c, 77, 8 << 20).expect("send after the backend's FIN");
    c.shutdown(Shutdown::Write).expect("shutdown");
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server result");
    assert_eq!(r, Ok(8 << 20), "{}", proxy.log_text());
}

/// A backend reset reaches the client as a reset (ECONNRESET), and a client
/// reset reaches the backend as one: never a clean close.
#[test]
fn resets_pass_through_as_resets() {
    if !require_root("resets_pass_through_as_resets") {
        return;
    }
    let ns = Netns::new("pxrst");
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    spawn_in(&ns, move || {
        let l = TcpListener::bind("127.0.0.1:8080").expect("bind");
        ready_tx.send(()).expect("ready");
        // 1st connection: read 5 bytes, then reset.
        let (mut s, _) = l.accept().expect("accept");
        let mut b = [0u8; 5];
        s.read_exact(&mut b).expect("read");
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        drop(s);
        // 2nd connection: the client resets; what does the backend see?
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let mut seen = Vec::new();
        let outcome = loop {
            match read_some(&mut s, &mut buf) {
                Ok(0) => break "clean close".to_owned(),
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => break format!("{:?}", e.kind()),
            }
        };
        tx.send((outcome, seen)).expect("report");
    });
    ready_rx.recv().expect("server up");
    let dir = temp_dir("rst");
    let cfg = config(
        &dir,
        "  - listen: 9080\n    to: 8080\n",
        "  fin_timeout: 30s\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();

    let mut c = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(b"hello").expect("write");
    let mut buf = [0u8; 16];
    let r = read_some(&mut c, &mut buf);
    match r {
        Err(e) if is_reset(&e) => {}
        other => panic!(
            "client saw {other:?} instead of ECONNRESET\n{}",
            proxy.log_text()
        ),
    }

    let c = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    (&c).write_all(b"abc").expect("write");
    // Make sure "abc" went through before resetting.
    std::thread::sleep(Duration::from_millis(50));
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(c);
    let (outcome, seen) = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("backend result");
    assert_eq!(seen, b"abc");
    assert_eq!(outcome, "ConnectionReset", "{}", proxy.log_text());
}

/// Nothing listens at the target: the client is closed at once (not after a
/// timeout), and the proxy keeps serving.
#[test]
fn backend_down_closes_the_client_at_once() {
    if !require_root("backend_down_closes_the_client_at_once") {
        return;
    }
    let ns = Netns::new("pxdown");
    let dir = temp_dir("down");
    let cfg = config(
        &dir,
        "  - listen: 9080\n    to: 8089\n",
        "  connect_timeout: 20s\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();
    for _ in 0..3 {
        let start = Instant::now();
        expect_closed_in(&ns, "127.0.0.1:9080", Duration::from_secs(5));
        assert!(start.elapsed() < Duration::from_secs(2));
    }
    proxy.expect_line("no backend for 8089", Duration::from_secs(5));
}

/// A target given by name is resolved for each connection (off the relay's
/// event loop) and served; a name that does not resolve gets the client
/// closed at once, with the reason in the log.
#[test]
fn backend_names_are_resolved() {
    if !require_root("backend_names_are_resolved") {
        return;
    }
    let ns = Netns::new("pxname");
    echo_server(&ns, "127.0.0.1:8086");
    let dir = temp_dir("name");
    let cfg = config(
        &dir,
        "  - listen: 9086\n    to: \"localhost:8086\"\n  - listen: 9087\n    to: \"no-such-host.invalid:8087\"\n",
        "  connect_timeout: 2s\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();
    for i in 0..3 {
        let mut c = connect_in(&ns, "127.0.0.1:9086").expect("connect");
        round_trip(&mut c, format!("by name {i}").as_bytes()).expect("echo through localhost");
    }

    let start = Instant::now();
    expect_closed_in(&ns, "127.0.0.1:9087", Duration::from_secs(10));
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?}",
        start.elapsed()
    );
    let line = proxy.expect_line(
        "no backend for no-such-host.invalid:8087",
        Duration::from_secs(5),
    );
    assert!(
        line.contains("cannot resolve no-such-host.invalid"),
        "{line}"
    );
}

/// A backend name whose lookup gets no answer (the namespace's resolver is
/// a UDP socket that reads and never replies, and resolv.conf gives it 30 s):
/// the client is closed after connect_timeout with the reason in the log,
/// not when the resolver gives up; clients that come while the lookup hangs
/// wait on the same lookup instead of starting their own.
#[test]
fn a_hanging_name_lookup_ends_at_connect_timeout() {
    if !require_root("a_hanging_name_lookup_ends_at_connect_timeout") {
        return;
    }
    let ns = Netns::new("pxdns");
    ns.etc_file(
        "resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n",
    );
    let silent = ns
        .enter(|| std::net::UdpSocket::bind("127.0.0.1:53"))
        .expect("a resolver that never answers");
    let dir = temp_dir("dnshang");
    let cfg = config(
        &dir,
        "  - listen: 9088\n    to: \"hangs.lowport.test:8088\"\n",
        "  connect_timeout: 1s\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();
    let start = Instant::now();
    expect_closed_in(&ns, "127.0.0.1:9088", Duration::from_secs(40));
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "closed only after {:?}: the lookup's own timeout, not connect_timeout",
        start.elapsed()
    );
    let line = proxy.expect_line(
        "no backend for hangs.lowport.test:8088",
        Duration::from_secs(5),
    );
    assert!(
        line.contains("name resolution: no answer within connect_timeout 1s"),
        "{line}"
    );
    // The lookup really went to the silent resolver (it did not fail fast).
    silent.set_nonblocking(true).expect("non-blocking");
    let mut query = [0u8; 512];
    assert!(
        silent.recv_from(&mut query).is_ok(),
        "the proxy never asked the namespace's resolver"
    );
    let asked_so_far = 1 + std::iter::from_fn(|| silent.recv_from(&mut query).ok()).count();

    // While that lookup still hangs, more clients for the same name share
    // it: each is reset at connect_timeout, and the resolver is asked
    // nothing more (one getaddrinfo sends an A and an AAAA query; ten
    // lookups would send twenty).
    let clients: Vec<Option<TcpStream>> = (0..10)
        .map(|_| connect_or_reset(&ns, "127.0.0.1:9088"))
        .collect();
    for mut c in clients.into_iter().flatten() {
        expect_closed(&mut c, Duration::from_secs(40));
    }
    let asked_later = std::iter::from_fn(|| silent.recv_from(&mut query).ok()).count();
    assert!(
        asked_so_far <= 2 && asked_later == 0,
        "{asked_so_far} queries for the first client, {asked_later} more for ten others"
    );
}

/// SYNs to the target are dropped (an nft rule in the test namespace): each
/// address gets its own connect_timeout, then the next is tried; when all
/// time out the client is closed.
#[test]
fn connect_timeout_per_address() {
    if !require_root("connect_timeout_per_address") {
        return;
    }
    let ns = Netns::new("pxsyn");
    ns.ok("nft", &["add", "table", "inet", "t"]);
    ns.ok(
        "nft",
        &["add chain inet t out { type filter hook output priority 0 ; }"],
    );
    ns.ok(
        "nft",
        &["add rule inet t out ip daddr 127.0.0.1 tcp dport 8082 drop"],
    );
    ns.ok(
        "nft",
        &["add rule inet t out ip6 daddr ::1 tcp dport 8083 drop"],
    );
    ns.ok(
        "nft",
        &["add rule inet t out ip daddr 127.0.0.1 tcp dport 8083 drop"],
    );
    // 8082: IPv4 dropped, IPv6 served -> served after one timeout.
    echo_server(&ns, "[::1]:8082");
    let dir = temp_dir("syn");
    let cfg = config(
        &dir,
        "  - listen: 9082\n    to: 8082\n  - listen: 9083\n    to: 8083\n",
        "  connect_timeout: 400ms\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();

    let start = Instant::now();
    let mut c = connect_in(&ns, "127.0.0.1:9082").expect("connect");
    round_trip(&mut c, b"through the second address").expect("echo via ::1");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_secs(5),
        "took {took:?}"
    );

    // 8083: both addresses dropped -> closed after two timeouts.
    let start = Instant::now();
    let mut c = connect_in(&ns, "127.0.0.1:9083").expect("connect");
    expect_closed(&mut c, Duration::from_secs(10));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(750) && took < Duration::from_secs(5),
        "took {took:?}"
    );
    let line = proxy.expect_line("no backend for 8083", Duration::from_secs(5));
    assert!(
        line.contains("127.0.0.1:8083: no answer within connect_timeout")
            && line.contains("[::1]:8083: no answer within connect_timeout"),
        "{line}"
    );
}

#[test]
fn idle_timeout_closes_quiet_connections_only() {
    if !require_root("idle_timeout_closes_quiet_connections_only") {
        return;
    }
    let ns = Netns::new("pxidle");
    echo_server(&ns, "127.0.0.1:8080");
    let dir = temp_dir("idle");
    let cfg = config(
        &dir,
        "  - listen: 9080\n    to: 8080\n",
        "  idle_timeout: 600ms\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();

    let mut busy = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    let mut quiet = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    round_trip(&mut quiet, b"once").expect("echo");
    let start = Instant::now();
    // The busy one talks every 150 ms for 1.5 s and must survive.
    while start.elapsed() < Duration::from_millis(1500) {
        round_trip(&mut busy, b"tick").expect("busy connection kept");
        std::thread::sleep(Duration::from_millis(150));
    }
    // The quiet one was closed after ~600 ms.
    quiet
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 8];
    match read_some(&mut quiet, &mut buf) {
        Ok(0) => {}
        other => panic!("quiet connection: expected EOF, got {other:?}"),
    }
    assert!(
        proxy.log_text().contains("idle for"),
        "{}",
        proxy.log_text()
    );
}

/// At max_connections the proxy stops accepting: the next client waits in
/// the backlog (not refused) and is served when a slot frees up.
#[test]
fn max_connections_pauses_accepting() {
    if !require_root("max_connections_pauses_accepting") {
        return;
    }
    let ns = Netns::new("pxmax");
    echo_server(&ns, "127.0.0.1:8080");
    let dir = temp_dir("max");
    let cfg = config(
        &dir,
        "  - listen: 9080\n    to: 8080\n",
        "  max_connections: 2\n",
    );
    let _proxy = Launch::new(&ns, &cfg).start();
    let mut a = connect_in(&ns, "127.0.0.1:9080").expect("connect a");
    let mut b = connect_in(&ns, "127.0.0.1:9080").expect("connect b");
    round_trip(&mut a, b"a").expect("a");
    round_trip(&mut b, b"b").expect("b");
    let mut c = connect_in(&ns, "127.0.0.1:9080").expect("c is queued, not refused");
    c.write_all(b"c").expect("write");
    c.set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    let r = read_some(&mut c, &mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "third connection was served beyond max_connections: {r:?}"
    );
    drop(a);
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.read_exact(&mut buf).expect("served once a slot is free");
    assert_eq!(&buf, b"c");
    round_trip(&mut b, b"still").expect("b still served");
}

/// A remote IPv6 client and a remote IPv4 client (v4-mapped on the
/// dual-stack listener) both get through; the PROXY v1 header the backend
/// receives names each client's real address, IPv4 as TCP4.
#[test]
fn ipv6_and_v4_mapped_clients() {
    if !require_root("ipv6_and_v4_mapped_clients") {
        return;
    }
    let lan = Lan::new("pxv6");
    // Backend: answer with the PROXY line it received, then echo.
    let (ready_tx, ready_rx) = mpsc::channel();
    spawn_in(&lan.host, move || {
        let l = TcpListener::bind("127.0.0.1:8080").expect("bind");
        ready_tx.send(()).expect("ready");
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
                let mut line = String::new();
                std::io::BufRead::read_line(&mut r, &mut line).expect("header");
                let mut w = s;
                w.write_all(line.as_bytes()).expect("answer");
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    ready_rx.recv().expect("backend up");
    let dir = temp_dir("v6");
    let cfg = config(
        &dir,
        "  - listen: 9080\n    to: 127.0.0.1:8080\n    proxy_protocol: v1\n",
        "  idle_timeout: 1m\n",
    );
    let proxy = Launch::new(&lan.host, &cfg).start();
    for (server, client, fam) in [
        (Lan::HOST_V4, Lan::REMOTE_V4, "TCP4"),
        (Lan::HOST_V6, Lan::REMOTE_V6, "TCP6"),
    ] {
        let addr: SocketAddr = if server.contains(':') {
            format!("[{server}]:9080")
        } else {
            format!("{server}:9080")
        }
        .parse()
        .expect("addr");
        let (line, local) = lan.remote.enter(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let local = s.local_addr().expect("local");
            let mut r = std::io::BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            std::io::BufRead::read_line(&mut r, &mut line).expect("header line");
            round_trip(&mut s, b"payload").expect("echo");
            (line, local)
        });
        assert_eq!(
            line,
            format!("PROXY {fam} {client} {server} {} 9080\r\n", local.port()),
            "{}",
            proxy.log_text()
        );
    }
}

/// A half-closed connection lingers at most fin_timeout: the client shut
/// its side, the backend never does, and the proxy closes the connection
/// with a FIN (no byte was in flight) after fin_timeout — not before, and
/// it counts it.
#[test]
fn fin_timeout_ends_a_half_closed_connection() {
    if !require_root("fin_timeout_ends_a_half_closed_connection") {
        return;
    }
    let ns = Netns::new("pxfin");
    // A backend that reads to EOF, then holds its side open and silent.
    let (tx, rx) = std::sync::mpsc::channel();
    let _backend = spawn_in(&ns, move || {
        let listener = std::net::TcpListener::bind("127.0.0.1:8080").expect("bind");
        tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        while read_some(&mut conn, &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
        std::thread::sleep(Duration::from_secs(10));
        drop(conn);
    });
    rx.recv().expect("backend started");
    let dir = temp_dir("fin");
    let cfg = config(
        &dir,
        "  - listen: 9080\n    to: 8080\n",
        "  fin_timeout: 800ms\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();
    let mut client = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    client.write_all(b"bye").expect("write");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let start = Instant::now();
    client
        .set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    let mut buf = [0u8; 8];
    // Nothing was in flight: a clean close (a FIN), not a reset.
    let ended = match read_some(&mut client, &mut buf) {
        Ok(0) => true,
        other => panic!("expected the proxy to close the connection, got {other:?}"),
    };
    let waited = start.elapsed();
    assert!(ended);
    assert!(
        waited >= Duration::from_millis(700),
        "ended after {waited:?}, before fin_timeout (800ms)"
    );
    assert!(
        waited < Duration::from_secs(6),
        "ended only after {waited:?}: fin_timeout (800ms) did not fire (the backend holds for 10 s)"
    );
    proxy.signal(libc::SIGUSR1);
    let line = proxy.expect_line("counters (SIGUSR1)", Duration::from_secs(5));
    assert!(line.contains("fin_timeouts=1"), "{line}");
}

/// A bulk sender that pauses without a FIN: the direction has moved to
/// splice, the splice that finds the socket empty (EAGAIN) must clear its
/// readiness, and the paused connection costs no CPU. Every bulk stream in
/// the other tests ends with a FIN, which hid a spin here.
#[test]
fn a_paused_bulk_sender_costs_no_cpu() {
    if !require_root("a_paused_bulk_sender_costs_no_cpu") {
        return;
    }
    let ns = Netns::new("pxpause");
    let backends = held_backend(&ns, "127.0.0.1:8080");
    let dir = temp_dir("pause");
    let cfg = write_config(&dir, "mappings:\n  - listen: 9080\n    to: 8080\n");
    let proxy = Launch::new(&ns, &cfg).start();

    let mut c = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    let mut b = backends
        .recv_timeout(Duration::from_secs(10))
        .expect("reached the backend");
    b.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // 40 KiB: more than the copy buffer, so the rest is spliced.
    let mut first = vec![0u8; 40 * 1024];
    pattern(3, 0, &mut first);
    c.write_all(&first).expect("first burst");
    let mut got = vec![0u8; first.len()];
    b.read_exact(&mut got).expect("first burst relayed");
    assert!(got == first, "the first burst differs");

    let before = proxy.cpu_ticks();
    std::thread::sleep(Duration::from_millis(1500));
    let used = proxy.cpu_ticks() - before;
    assert!(
        used <= 20,
        "the proxy used {used} clock ticks of CPU in 1.5 s while the sender paused"
    );

    let mut second = vec![0u8; 40 * 1024];
    pattern(3, first.len() as u64, &mut second);
    c.write_all(&second).expect("second burst");
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).expect("second burst and the FIN");
    assert!(rest == second, "the second burst differs");
}

/// Megabytes queued at the proxy with the FIN right behind them: the proxy
/// is frozen (SIGSTOP) while the client sends and half-closes, so the FIN
/// is reported with everything still queued, and the splices that follow
/// come back shorter than what is queued. None of that is an end of
/// stream: every byte arrives, then the FIN.
#[test]
fn bytes_queued_ahead_of_a_fin_all_arrive() {
    if !require_root("bytes_queued_ahead_of_a_fin_all_arrive") {
        return;
    }
    let ns = Netns::new("pxqfin");
    // Receive buffers that start large, so the whole upload fits in the
    // frozen proxy's receive queue and its FIN gets there too.
    ns.ok("sysctl", &["-qw", "net.ipv4.tcp_rmem=4096 8388608 8388608"]);
    // A real network's MTU: segments of 1448 bytes, one per pipe slot, so a
    // splice ends when the pipe's slots run out, short of its capacity.
    ns.ok("ip", &["link", "set", "lo", "mtu", "1500"]);
    let backends = held_backend(&ns, "127.0.0.1:8080");
    let dir = temp_dir("qfin");
    let cfg = write_config(&dir, "mappings:\n  - listen: 9080\n    to: 8080\n");
    let proxy = Launch::new(&ns, &cfg).start();

    const LEN: u64 = 3_000_000;
    let mut c = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    let mut b = backends
        .recv_timeout(Duration::from_secs(10))
        .expect("reached the backend");
    proxy.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(200));
    send_pattern(&mut c, 11, LEN).expect("upload");
    c.shutdown(Shutdown::Write).expect("half-close");
    std::thread::sleep(Duration::from_millis(300));
    proxy.signal(libc::SIGCONT);
    b.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let got = recv_pattern(&mut b, 11)
        .unwrap_or_else(|e| panic!("the backend's stream: {e}\n{}", proxy.log_text()));
    assert_eq!(
        got, LEN,
        "the backend got {got} of {LEN} bytes before the FIN"
    );
}

//! `lowport proxy` against clients and backends that line events up to hurt
//! it: the real binary as `nobody` in a test namespace, frozen with SIGSTOP
//! while the events queue in its epoll instance, so each run sees the same
//! batch.

mod common;
mod proxy_support;

use std::io::Write;
use std::net::Shutdown;
use std::sync::mpsc;
use std::time::Duration;

use common::{require_root, Netns};
use proxy_support::*;

/// Is the process stopped (state T in /proc/PID/stat)?
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
        .unwrap_or(false)
}

/// The slot of a connection that ends while a batch of events is handled
/// is taken by a client accepted in the same batch; an event the dead
/// connection still had in that batch (its client's FIN) must not be
/// applied to the newcomer. Before event data carried a generation, the
/// stale EPOLLRDHUP marked the new client read-closed while its reads
/// returned EAGAIN, and the one relay thread spun on recvfrom forever:
/// every mapping stopped serving.
#[test]
fn a_stale_event_does_not_hijack_a_reused_slot() {
    if !require_root("a_stale_event_does_not_hijack_a_reused_slot") {
        return;
    }
    let ns = Netns::new("pxstale");
    let backends = held_backend(&ns, "127.0.0.1:8080");
    let dir = temp_dir("stale");
    let cfg = write_config(&dir, "mappings:\n  - listen: 9080\n    to: 8080\n");
    let proxy = Launch::new(&ns, &cfg).start();

    // Connection A, relaying.
    let mut a = connect_in(&ns, "127.0.0.1:9080").expect("connect A");
    let a_backend = backends
        .recv_timeout(Duration::from_secs(10))
        .expect("A reached the backend");
    let mut a_backend = a_backend;
    a.write_all(b"ping").expect("write A");
    // The proxy has relayed it: no event of A's client is left over.
    a_backend
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut ping = [0u8; 4];
    std::io::Read::read_exact(&mut a_backend, &mut ping).expect("A's ping");

    // Freeze the proxy and line the events up in its epoll ready list:
    // A's backend resets (A ends and frees its slot), B connects (accepted
    // into that slot), A's client half-closes (a stale event for the slot).
    proxy.signal(libc::SIGSTOP);
    assert!(
        wait_until(Duration::from_secs(5), || stopped(proxy.pid())),
        "the proxy did not stop"
    );
    socket2::SockRef::from(&a_backend)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(a_backend);
    std::thread::sleep(Duration::from_millis(100));
    let mut b = connect_in(&ns, "127.0.0.1:9080").expect("connect B");
    std::thread::sleep(Duration::from_millis(100));
    a.shutdown(Shutdown::Write).expect("half-close A");
    std::thread::sleep(Duration::from_millis(100));
    proxy.signal(libc::SIGCONT);

    // B is served, byte for byte, by a backend connection of its own.
    let mut b_backend = backends
        .recv_timeout(Duration::from_secs(10))
        .expect("B reached the backend");
    b.write_all(b"hello from B").expect("write B");
    b_backend
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = [0u8; 12];
    std::io::Read::read_exact(&mut b_backend, &mut got)
        .unwrap_or_else(|e| panic!("B's bytes did not arrive: {e}\n{}", proxy.log_text()));
    assert_eq!(&got, b"hello from B");
    b_backend.write_all(b"answer").expect("write to B");
    let mut back = [0u8; 6];
    b.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    std::io::Read::read_exact(&mut b, &mut back).expect("B's answer");
    assert_eq!(&back, b"answer");

    // And the relay thread is not spinning on anything.
    let before = proxy.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = proxy.cpu_ticks() - before;
    assert!(
        used <= 20,
        "the idle proxy used {used} clock ticks of CPU in 1 s\n{}",
        proxy.log_text()
    );
    // B's client side is still open: its half-close was never seen.
    b_backend
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    match std::io::Read::read(&mut b_backend, &mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("B's backend saw {other:?}: A's half-close reached B"),
    }
}

/// A backend that reads each connection to its end and hands the test what
/// it got (or the error that ended it).
fn sink_backend(ns: &Netns, addr: &str) -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let held = held_backend(ns, addr);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for mut conn in held {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let r = std::io::Read::read_to_end(&mut conn, &mut got).map(|_| got);
                let _ = tx.send(r);
            });
        }
    });
    rx
}

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    pattern(seed, 0, &mut b);
    b
}

/// A client that sends one byte with MSG_OOB in the middle of a bulk
/// upload: every byte reaches the backend in order, the urgent byte in its
/// place, before the FIN. splice stops at the urgent mark and returned 0
/// there once the FIN was queued: the stream ended after the first 4 MB,
/// cleanly, as if complete.
#[test]
fn urgent_data_in_a_bulk_upload_loses_no_byte() {
    if !require_root("urgent_data_in_a_bulk_upload_loses_no_byte") {
        return;
    }
    let ns = Netns::new("pxurg");
    let got = sink_backend(&ns, "127.0.0.1:8080");
    let dir = temp_dir("urgent");
    let cfg = write_config(&dir, "mappings:\n  - listen: 9080\n    to: 8080\n");
    let proxy = Launch::new(&ns, &cfg).start();

    let (first, second) = (bytes(1, 4_000_000), bytes(2, 4_000_000));
    for _ in 0..3 {
        let mut c = connect_in(&ns, "127.0.0.1:9080").expect("connect");
        send_with_urgent_byte(&mut c, &first, &second);
        expect_with_urgent_byte(&got, &first, &second, &proxy);
    }
}

/// Small exchanges with an urgent byte between them, both ways: each byte
/// arrives at once (a read that stopped at the urgent mark used to count
/// as "the queue is empty", and the bytes behind it waited for the next
/// segment or for idle_timeout).
#[test]
fn urgent_bytes_in_small_exchanges_arrive_at_once() {
    if !require_root("urgent_bytes_in_small_exchanges_arrive_at_once") {
        return;
    }
    let ns = Netns::new("pxurgs");
    let backends = held_backend(&ns, "127.0.0.1:8080");
    let dir = temp_dir("urgents");
    let cfg = write_config(&dir, "mappings:\n  - listen: 9080\n    to: 8080\n");
    let proxy = Launch::new(&ns, &cfg).start();

    for round in 0..10 {
        let mut c = connect_in(&ns, "127.0.0.1:9080").expect("connect");
        let mut b = backends
            .recv_timeout(Duration::from_secs(10))
            .expect("reached the backend");
        for to_backend in [true, false] {
            let (from, to) = if to_backend {
                (&mut c, &mut b)
            } else {
                (&mut b, &mut c)
            };
            from.write_all(b"a").expect("a");
            socket2::SockRef::from(&*from)
                .send_out_of_band(b"b")
                .expect("urgent b");
            from.write_all(b"c").expect("c");
            to.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut got = Vec::new();
            while got.len() < 3 {
                let mut buf = [0u8; 8];
                match read_some(to, &mut buf) {
                    Ok(0) => panic!("round {round}: closed after {got:?}"),
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("round {round}: got {got:?}, then {e}\n{}", proxy.log_text()),
                }
            }
            assert_eq!(got, b"abc", "round {round}");
        }
    }
}

/// A client that sends its request and half-closes (`nc -N`, HTTP/1.0
/// scripts) and then downloads for longer than fin_timeout gets the whole
/// download: fin_timeout bounds a half-closed connection that has gone
/// silent, not one still moving bytes. It used to count from the
/// half-close and end the download with a clean FIN half-way.
#[test]
fn fin_timeout_does_not_cut_an_active_download() {
    if !require_root("fin_timeout_does_not_cut_an_active_download") {
        return;
    }
    let ns = Netns::new("pxfinact");
    let backends = held_backend(&ns, "127.0.0.1:8080");
    let dir = temp_dir("finact");
    let cfg = write_config(
        &dir,
        "mappings:\n  - listen: 9080\n    to: 8080\nproxy:\n  fin_timeout: 1s\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();

    let mut c = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    c.write_all(b"GET /big HTTP/1.0\r\n\r\n").expect("request");
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut b = backends
        .recv_timeout(Duration::from_secs(10))
        .expect("reached the backend");
    // 3 MB at about 1.5 MB/s: two seconds, twice fin_timeout.
    let body = bytes(7, 3_000_000);
    let sender = std::thread::spawn(move || {
        let mut request = Vec::new();
        std::io::Read::read_to_end(&mut b, &mut request).expect("request");
        for chunk in body.chunks(75_000) {
            // A proxy that cut the download resets this side: the
            // client's count below says so.
            if b.write_all(chunk).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = b.shutdown(Shutdown::Write);
        body
    });
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut c, &mut got)
        .unwrap_or_else(|e| panic!("download: {e}\n{}", proxy.log_text()));
    let body = sender.join().expect("backend");
    assert_eq!(
        got.len(),
        body.len(),
        "the download ended after {} of {} bytes\n{}",
        got.len(),
        body.len(),
        proxy.log_text()
    );
    assert!(got == body, "the download differs");
}

/// idle_timeout while the proxy still holds bytes for a backend that reads
/// nothing: both sides see a reset. The backend used to get the bytes that
/// fit in the socket buffers and then a clean EOF, a stream cut short that
/// looked complete.
#[test]
fn idle_timeout_with_bytes_in_flight_resets_both_sides() {
    if !require_root("idle_timeout_with_bytes_in_flight_resets_both_sides") {
        return;
    }
    let ns = Netns::new("pxidlecut");
    let backends = held_backend(&ns, "127.0.0.1:8080");
    let dir = temp_dir("idlecut");
    let cfg = write_config(
        &dir,
        "mappings:\n  - listen: 9080\n    to: 8080\nproxy:\n  idle_timeout: 1s\n",
    );
    let proxy = Launch::new(&ns, &cfg).start();

    let mut c = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    let mut b = backends
        .recv_timeout(Duration::from_secs(10))
        .expect("reached the backend");
    // More than the socket buffers on the way hold; the client's writes
    // stall, and so does everything after the first few MB.
    let upload = std::thread::spawn(move || {
        let data = bytes(9, 16_000_000);
        let r = c.write_all(&data);
        (c, r)
    });
    // The backend reads nothing until well after idle_timeout.
    std::thread::sleep(Duration::from_secs(3));
    let mut got = Vec::new();
    let r = std::io::Read::read_to_end(&mut b, &mut got);
    assert!(
        matches!(&r, Err(e) if is_reset(e)),
        "the backend read {} bytes and then {r:?}, not a reset\n{}",
        got.len(),
        proxy.log_text()
    );
    // The client either stalled in its upload or finished it into the
    // buffers; either way its connection ends with a reset.
    let (mut c, sent) = upload.join().expect("client");
    let ended = match sent {
        Err(e) => e,
        Ok(()) => {
            c.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut buf = [0u8; 16];
            match read_some(&mut c, &mut buf) {
                Err(e) => e,
                Ok(n) => panic!("the client read {n} bytes, not a reset"),
            }
        }
    };
    assert!(
        is_reset(&ended) || ended.kind() == std::io::ErrorKind::BrokenPipe,
        "the client's connection ended with {ended}, not a reset"
    );
}

/// The same with everything queued at once: the proxy is frozen while the
/// client sends 1 MB, the urgent byte, 1 MB and its FIN, so the FIN is
/// reported with both megabytes queued and the splice that stops at the
/// urgent mark comes back short. Neither is an end of stream.
#[test]
fn urgent_data_queued_ahead_of_a_fin_loses_no_byte() {
    if !require_root("urgent_data_queued_ahead_of_a_fin_loses_no_byte") {
        return;
    }
    let ns = Netns::new("pxurgq");
    // Receive buffers that start large, so the whole upload and its FIN
    // fit in the frozen proxy's receive queue.
    ns.ok("sysctl", &["-qw", "net.ipv4.tcp_rmem=4096 8388608 8388608"]);
    let got = sink_backend(&ns, "127.0.0.1:8080");
    let dir = temp_dir("urgentq");
    let cfg = write_config(&dir, "mappings:\n  - listen: 9080\n    to: 8080\n");
    let proxy = Launch::new(&ns, &cfg).start();

    let (first, second) = (bytes(3, 1_000_000), bytes(4, 1_000_000));
    let mut c = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    std::thread::sleep(Duration::from_millis(200));
    proxy.signal(libc::SIGSTOP);
    assert!(
        wait_until(Duration::from_secs(5), || stopped(proxy.pid())),
        "the proxy did not stop"
    );
    send_with_urgent_byte(&mut c, &first, &second);
    std::thread::sleep(Duration::from_millis(300));
    proxy.signal(libc::SIGCONT);
    expect_with_urgent_byte(&got, &first, &second, &proxy);
}

/// `first`, one urgent byte `U` (MSG_OOB), `second`, then a FIN.
fn send_with_urgent_byte(c: &mut std::net::TcpStream, first: &[u8], second: &[u8]) {
    c.write_all(first).expect("the bytes before the urgent one");
    socket2::SockRef::from(&*c)
        .send_out_of_band(b"U")
        .expect("urgent byte");
    c.write_all(second).expect("the bytes after it");
    c.shutdown(Shutdown::Write).expect("half-close");
}

/// The backend's connection ended cleanly after exactly `first`, `U`,
/// `second`.
fn expect_with_urgent_byte(
    got: &mpsc::Receiver<std::io::Result<Vec<u8>>>,
    first: &[u8],
    second: &[u8],
    proxy: &Proxy,
) {
    let received = got
        .recv_timeout(Duration::from_secs(30))
        .expect("the backend's connection ended")
        .expect("the backend read to a clean end");
    assert_eq!(
        received.len(),
        first.len() + 1 + second.len(),
        "the backend got {} bytes\n{}",
        received.len(),
        proxy.log_text()
    );
    assert!(received[..first.len()] == *first, "the bytes before differ");
    assert_eq!(received[first.len()], b'U', "the urgent byte");
    assert!(
        received[first.len() + 1..] == *second,
        "the bytes after differ"
    );
}

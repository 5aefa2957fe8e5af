//! `lowport proxy` against clients and backends that line events up to hurt
//! it: the real binary as `nobody` in a test namespace, frozen with SIGSTOP
//! while the events queue in its epoll instance, so each run sees the same
//! batch.

mod common;
mod proxy_support;

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use common::{require_root, Netns};
use proxy_support::*;

/// A backend that hands each accepted socket to the test, which decides
/// what happens to it.
fn held_backend(ns: &Netns, addr: &str) -> mpsc::Receiver<TcpStream> {
    let addr: SocketAddr = addr.parse().expect("addr");
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    spawn_in(ns, move || {
        let listener = TcpListener::bind(addr).expect("bind backend");
        ready_tx.send(()).expect("ready");
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if tx.send(conn).is_err() {
                return;
            }
        }
    });
    ready_rx.recv().expect("backend started");
    rx
}

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

//! Signals and configuration: SIGHUP reloads without dropping live
//! connections, SIGTERM drains and exits 0. UDP reloads: tests/proxy_udp.rs.

mod common;
mod proxy_support;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{require_root, Netns};
use proxy_support::*;

#[test]
fn sighup_keeps_live_connections_adds_and_removes_listeners() {
    if !require_root("sighup_keeps_live_connections_adds_and_removes_listeners") {
        return;
    }
    let ns = Netns::new("pxhup");
    echo_server(&ns, "127.0.0.1:8080");
    let dir = temp_dir("hup");
    let cfg = write_config(&dir, "mappings:\n  - listen: 9080\n    to: 8080\n");
    let proxy = Launch::new(&ns, &cfg).start();
    let mut live = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    round_trip(&mut live, b"before").expect("echo");

    // Add 9081.
    write_config(
        &dir,
        "mappings:\n  - listen: 9080\n    to: 8080\n  - listen: 9081\n    to: 8080\n",
    );
    proxy.signal(libc::SIGHUP);
    proxy.expect_line("reloaded configuration", Duration::from_secs(10));
    round_trip(&mut live, b"after reload").expect("live connection kept");
    let mut c = connect_in(&ns, "127.0.0.1:9081").expect("new listener");
    round_trip(&mut c, b"new").expect("echo on the new listener");

    // An invalid file is rejected; everything keeps serving.
    write_config(
        &dir,
        "mappings:\n  - listen: 9080\n    to: 8080\n    bogus: 1\n",
    );
    proxy.signal(libc::SIGHUP);
    proxy.expect_line("rejected", Duration::from_secs(10));
    round_trip(&mut live, b"after a bad reload").expect("live connection kept");
    let mut c = connect_in(&ns, "127.0.0.1:9081").expect("9081 kept");
    round_trip(&mut c, b"still").expect("echo");

    // Remove 9080: its listener closes, its live connection goes on.
    write_config(&dir, "mappings:\n  - listen: 9081\n    to: 8080\n");
    proxy.signal(libc::SIGHUP);
    proxy.expect_line("reloaded configuration", Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(5), || connect_in(&ns, "127.0.0.1:9080")
            .is_err()),
        "9080 still accepts after its mapping was removed"
    );
    round_trip(&mut live, b"listener gone, connection not").expect("live connection kept");
}

/// A reload that shortens idle_timeout holds for connections already open:
/// an idle live connection is closed by the new timeout, not the old hour.
#[test]
fn sighup_shorter_idle_timeout_applies_to_live_connections() {
    if !require_root("sighup_shorter_idle_timeout_applies_to_live_connections") {
        return;
    }
    let ns = Netns::new("pxidle");
    echo_server(&ns, "127.0.0.1:8080");
    let dir = temp_dir("idle");
    let mapping = "mappings:\n  - listen: 9080\n    to: 8080\n";
    let cfg = write_config(&dir, &format!("{mapping}proxy:\n  idle_timeout: 1h\n"));
    let proxy = Launch::new(&ns, &cfg).start();
    let mut live = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    round_trip(&mut live, b"before").expect("echo");

    write_config(&dir, &format!("{mapping}proxy:\n  idle_timeout: 1s\n"));
    proxy.signal(libc::SIGHUP);
    proxy.expect_line("reloaded configuration", Duration::from_secs(10));
    let start = Instant::now();
    expect_closed(&mut live, Duration::from_secs(30));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "closed after {:?}",
        start.elapsed()
    );
    proxy.expect_line("idle for 1s: closed", Duration::from_secs(5));
}

#[test]
fn sigterm_drains_then_exits_zero() {
    if !require_root("sigterm_drains_then_exits_zero") {
        return;
    }
    let ns = Netns::new("pxterm");
    echo_server(&ns, "127.0.0.1:8080");
    let dir = temp_dir("term");
    let cfg = write_config(
        &dir,
        "mappings:\n  - listen: 9080\n    to: 8080\nproxy:\n  shutdown_timeout: 20s\n",
    );
    let mut proxy = Launch::new(&ns, &cfg).start();
    let mut live = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    round_trip(&mut live, b"before").expect("echo");

    proxy.signal(libc::SIGTERM);
    proxy.expect_line("stopped accepting", Duration::from_secs(10));
    assert!(
        connect_in(&ns, "127.0.0.1:9080").is_err(),
        "still accepting after SIGTERM"
    );
    // The live connection is still served while draining...
    round_trip(&mut live, b"draining").expect("live connection served while draining");
    assert_eq!(proxy.child.try_wait().expect("wait"), None, "exited early");
    // ...and the proxy exits 0 as soon as it closes.
    let closed = Instant::now();
    live.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    live.read_to_end(&mut rest).expect("read to end");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(closed.elapsed() < Duration::from_secs(5));
    assert!(proxy.log_text().contains("counters (shutdown)"));
}

#[test]
fn sigterm_resets_what_outlives_shutdown_timeout() {
    if !require_root("sigterm_resets_what_outlives_shutdown_timeout") {
        return;
    }
    let ns = Netns::new("pxterm2");
    echo_server(&ns, "127.0.0.1:8080");
    let dir = temp_dir("term2");
    let cfg = write_config(
        &dir,
        "mappings:\n  - listen: 9080\n    to: 8080\nproxy:\n  shutdown_timeout: 300ms\n",
    );
    let mut proxy = Launch::new(&ns, &cfg).start();
    let mut live = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    round_trip(&mut live, b"before").expect("echo");
    proxy.signal(libc::SIGINT);
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    live.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 8];
    match read_some(&mut live, &mut buf) {
        Err(e) if is_reset(&e) => {}
        other => panic!("expected a reset after shutdown_timeout, got {other:?}"),
    }
}
/// A reload re-arms every live connection's deadline: a half-closed one
/// keeps its fin_timeout (the new, shorter one), not only idle_timeout.
#[test]
fn sighup_keeps_fin_timeout_for_half_closed_connections() {
    if !require_root("sighup_keeps_fin_timeout_for_half_closed_connections") {
        return;
    }
    let ns = Netns::new("pxhupfin");
    // A backend that reads to EOF, then holds its side open and silent.
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in(&ns, move || {
        let listener = std::net::TcpListener::bind("127.0.0.1:8080").expect("bind");
        tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        while read_some(&mut conn, &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
        let _ = tx.send(());
        std::thread::sleep(Duration::from_secs(60));
        drop(conn);
    });
    rx.recv().expect("backend started");
    let dir = temp_dir("hupfin");
    let mapping = "mappings:\n  - listen: 9080\n    to: 8080\n";
    let cfg = write_config(
        &dir,
        &format!("{mapping}proxy:\n  idle_timeout: 1h\n  fin_timeout: 1h\n"),
    );
    let proxy = Launch::new(&ns, &cfg).start();
    let mut client = connect_in(&ns, "127.0.0.1:9080").expect("connect");
    std::io::Write::write_all(&mut client, b"bye").expect("write");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    // The proxy has passed the half-close on: the connection is half-closed
    // before the reload, not after it.
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the backend saw the FIN");

    write_config(
        &dir,
        &format!("{mapping}proxy:\n  idle_timeout: 1h\n  fin_timeout: 1s\n"),
    );
    proxy.signal(libc::SIGHUP);
    proxy.expect_line("reloaded configuration", Duration::from_secs(10));
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = [0u8; 8];
    match read_some(&mut client, &mut buf) {
        Ok(0) => {}
        other => panic!(
            "expected a close by the new fin_timeout, got {other:?}\n{}",
            proxy.log_text()
        ),
    }
    proxy.expect_line("half-closed and silent for 1s", Duration::from_secs(5));
}

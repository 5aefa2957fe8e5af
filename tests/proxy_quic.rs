//! A real QUIC connection (quinn, a peer lowport did not write) through
//! `lowport proxy` on 443/udp: the handshake and several streams byte for
//! byte, then the client moves to a new local port (migration) and the
//! connection survives. The real binary, in a namespace; the QUIC server is
//! a process of its own, as `nobody` (examples/quic_server.rs).

mod common;
mod proxy_support;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::{require_root, runnable_by_anyone, Netns};
use proxy_support::*;

/// A real QUIC connection through the proxy on 443/udp: the proxy starts
/// as root, binds 443 and drops every capability; quinn's handshake and
/// several streams go through byte for byte; then the client moves to a
/// new local port (migration) and the connection survives.
#[test]
fn quic_through_the_proxy_survives_migration() {
    if !require_root("quic_through_the_proxy_survives_migration") {
        return;
    }
    let mut ns = Netns::new("pxquic");
    let dir = temp_dir("quic");
    let cfg = write_config(
        &dir,
        "mappings:\n  - {name: h3, listen: 443, to: 8443, protocol: udp}\n",
    );
    let mut launch = Launch::new(&ns, &cfg);
    launch.user = None; // as root: lowport switches to nobody itself
    let proxy = launch.start();
    // After binding 443/udp: no capability, not root, no_new_privs.
    let status = proxy.status();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key} in status:\n{status}"))
            .to_owned()
    };
    for key in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(field(key), "0000000000000000", "{key}\n{status}");
    }
    assert!(
        field("Uid").split_whitespace().all(|u| u != "0"),
        "{status}"
    );
    assert_eq!(field("NoNewPrivs"), "1", "{status}");

    // The QUIC server: a process of its own, as nobody, on 8443/udp.
    let mut server = ns
        .command("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(runnable_by_anyone(&example_bin("quic_server")))
        .arg("127.0.0.1:8443")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start the QUIC server");
    let mut server_out = std::io::BufReader::new(server.stdout.take().expect("stdout"));
    let server_pid = server.id();
    ns.adopt(server);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut server_out, &mut line).expect("the server's first line");
    let cert_hex = line
        .trim()
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("QUIC server did not start: {line:?}"));
    let cert: Vec<u8> = (0..cert_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cert_hex[i..i + 2], 16).expect("hex"))
        .collect();
    let server_status =
        std::fs::read_to_string(format!("/proc/{server_pid}/status")).expect("server status");
    let uid = server_status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid");
    assert!(
        uid.split_whitespace().all(|u| u != "0"),
        "the QUIC server runs as root: {uid}"
    );

    let client_sock = ns
        .enter(|| UdpSocket::bind("127.0.0.1:0"))
        .expect("bind the QUIC client");
    let moved_sock = ns
        .enter(|| UdpSocket::bind("127.0.0.1:0"))
        .expect("bind the client's second socket");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async move {
        tokio::time::timeout(
            Duration::from_secs(60),
            quic_exchange(cert, client_sock, moved_sock),
        )
        .await
    });
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("QUIC through the proxy: {e}\n{}", proxy.log_text()),
        Err(_) => panic!("QUIC through the proxy timed out\n{}", proxy.log_text()),
    }
    // The server saw the six streams, and the client's move as a second
    // address: the relay's new flow, from another port.
    let mut line = String::new();
    std::io::BufRead::read_line(&mut server_out, &mut line).expect("the server's last line");
    let (handled, seen) = line
        .trim()
        .strip_prefix("handled ")
        .and_then(|r| r.split_once(" from "))
        .unwrap_or_else(|| panic!("QUIC server: {line:?}"));
    assert_eq!(handled, "6", "{line}");
    assert_eq!(seen.split(',').count(), 2, "{line}");
    let c = udp_counters(&proxy);
    // The migration was a second flow (new client port), the first one's
    // datagrams stopped.
    assert_eq!(c["udp_flows_opened"], 2, "{c:?}");
}

/// Path of a test-only example binary (`examples/NAME.rs`, built by
/// `cargo test`), next to the test binaries.
fn example_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds it (or `cargo build --examples`)",
        path.display()
    );
    path
}

async fn quic_exchange(
    cert: Vec<u8>,
    client_sock: UdpSocket,
    moved_sock: UdpSocket,
) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = quinn::default_runtime().ok_or("no quinn runtime")?;
    let mut roots = quinn::rustls::RootCertStore::empty();
    roots.add(quinn::rustls::pki_types::CertificateDer::from(cert))?;
    let client_config = quinn::ClientConfig::with_root_certificates(Arc::new(roots))?;
    let mut client =
        quinn::Endpoint::new(quinn::EndpointConfig::default(), None, client_sock, runtime)?;
    client.set_default_client_config(client_config);

    let proxy: SocketAddr = "127.0.0.1:443".parse()?;
    let conn = client.connect(proxy, "localhost")?.await?;
    let exchange = |conn: quinn::Connection, seed: u64, len: usize| async move {
        let (mut send, mut recv) = conn.open_bi().await?;
        let mut data = vec![0u8; len];
        pattern(seed, 0, &mut data);
        send.write_all(&data).await?;
        send.finish()?;
        let mut back = recv.read_to_end(1 << 22).await?;
        back.reverse();
        if back != data {
            return Err::<(), Box<dyn std::error::Error>>(
                format!(
                    "stream {seed}: {} bytes back, not the {len} sent",
                    back.len()
                )
                .into(),
            );
        }
        Ok(())
    };
    for (seed, len) in [(1u64, 1usize), (2, 1200), (3, 100_000), (4, 1 << 20)] {
        exchange(conn.clone(), seed, len).await?;
    }
    // Migration: a new local port mid-connection.
    let before = conn.remote_address();
    client.rebind(moved_sock)?;
    for (seed, len) in [(5u64, 5000usize), (6, 300_000)] {
        exchange(conn.clone(), seed, len).await?;
    }
    if conn.close_reason().is_some() {
        return Err("the connection closed after the rebind".into());
    }
    if conn.remote_address() != before {
        return Err("the server's address changed".into());
    }
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    Ok(())
}

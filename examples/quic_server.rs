//! Test QUIC server: the unprivileged HTTP/3-style backend behind
//! `lowport proxy` in tests/proxy_udp.rs, a process of its own that the
//! test starts as `nobody`.
//!
//! `quic_server ADDR` serves QUIC (the `quinn` crate) on ADDR/udp with a
//! self-signed certificate for "localhost", and prints one line,
//! `ready <certificate DER in hex>`, for the client to trust. It accepts one
//! connection and answers each bidirectional stream with the bytes it
//! received, reversed (a reply cannot pass for its request). When that
//! connection ends it prints `handled <streams> from <client addresses>`
//! (every address the client had, comma-separated, in order: a migration
//! shows as a second one) and exits.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .ok_or("usage: quic_server ADDR")?
        .parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> Result<(), Error> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let cert_der: CertificateDer<'static> = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let config = quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key)?;
    let server = quinn::Endpoint::server(config, addr)?;
    let hex: String = cert_der.iter().map(|b| format!("{b:02x}")).collect();
    println!("ready {hex}");

    let incoming = server.accept().await.ok_or("no incoming connection")?;
    let conn = incoming.await?;
    let seen = Arc::new(Mutex::new(vec![conn.remote_address()]));
    // The client's address as the server sees it, each time it changes.
    let watch = {
        let (conn, seen) = (conn.clone(), Arc::clone(&seen));
        tokio::spawn(async move {
            loop {
                let now = conn.remote_address();
                if let Ok(mut s) = seen.lock() {
                    if s.last() != Some(&now) {
                        s.push(now);
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
    };
    let mut handled = 0;
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let mut data = recv.read_to_end(1 << 22).await?;
        data.reverse();
        send.write_all(&data).await?;
        send.finish()?;
        handled += 1;
        if let Ok(mut s) = seen.lock() {
            let now = conn.remote_address();
            if s.last() != Some(&now) {
                s.push(now);
            }
        }
    }
    watch.abort();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let seen: Vec<String> = seen.iter().map(ToString::to_string).collect();
    println!("handled {handled} from {}", seen.join(","));
    server.wait_idle().await;
    Ok(())
}

//! Test backend: the unprivileged "web server" behind lowport in the tests.
//!
//! `backend ADDR` listens on ADDR over TCP and UDP and prints `ready`. A TCP
//! client first gets one banner line, `backend <local addr> peer <client
//! addr>` (so a test sees which address the client really had), then
//! everything it sends echoed back; the backend half-closes after the
//! client does. A UDP datagram is answered with the same banner.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

fn serve(mut s: TcpStream) -> std::io::Result<()> {
    let banner = format!("backend {} peer {}\n", s.local_addr()?, s.peer_addr()?);
    s.write_all(banner.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return s.shutdown(std::net::Shutdown::Write);
        }
        s.write_all(&buf[..n])?;
    }
}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .expect("usage: backend ADDR")
        .parse()
        .expect("ADDR is ip:port");
    let listener = TcpListener::bind(addr)?;
    let udp = UdpSocket::bind(addr)?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let banner = format!("backend {} peer {}\n", udp.local_addr().unwrap(), peer);
            let _ = udp.send_to(banner.as_bytes(), peer);
        }
    });
    println!("ready");
    std::io::stdout().flush()?;
    for s in listener.incoming().flatten() {
        std::thread::spawn(move || serve(s));
    }
    Ok(())
}

//! Listening sockets: bound here, or handed over by systemd socket activation.
//!
//! A mapping without an address gets one dual-stack socket, `[::]:PORT` with
//! `IPV6_V6ONLY` explicitly off, so IPv4 clients arrive as `::ffff:a.b.c.d`
//! (unmapped again wherever an address is shown or sent). Without IPv6 in
//! the kernel it falls back to `0.0.0.0:PORT`. An explicit address listens
//! there only (`[::]` is IPv6 only, as the YAML contract says).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{FromRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

use crate::mapping::{Listen, L4};

/// Pending connections the kernel queues before they are accepted — while
/// a burst outruns accepting, accepting is paused (max_connections
/// reached) or backing off: as many as `net.core.somaxconn` allows (the
/// kernel caps the value to it; 4096 by default since Linux 5.4). Past the
/// queue the kernel drops a client's SYN and the client waits a second or
/// more to retry: a fixed 1024 did that to a burst of 3000 connections.
const BACKLOG: i32 = i32::MAX;

/// First fd passed by socket activation (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Bind the TCP socket(s) for one mapping's listen spec.
pub fn bind_listen(listen: &Listen) -> io::Result<Vec<std::net::TcpListener>> {
    bind_spec(listen, bind_one)
}

/// Bind the UDP socket(s) for one mapping's listen spec: the same
/// addresses as [`bind_listen`]. No SO_REUSEADDR: for UDP it would let
/// another socket bind the same port and take its datagrams.
pub fn bind_listen_udp(listen: &Listen) -> io::Result<Vec<std::net::UdpSocket>> {
    bind_spec(listen, |addr, v6only| {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if let Some(only) = v6only {
            socket.set_only_v6(only)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(socket.into())
    })
}

fn bind_spec<T>(
    listen: &Listen,
    bind: impl Fn(SocketAddr, Option<bool>) -> io::Result<T>,
) -> io::Result<Vec<T>> {
    let port = listen.port.get();
    match listen.addr {
        None => {
            let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
            match bind(any6, Some(false)) {
                Ok(l) => Ok(vec![l]),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
                    ) =>
                {
                    // No IPv6 on this host: every IPv4 address, then.
                    let any4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
                    Ok(vec![bind(any4, None)?])
                }
                Err(e) => Err(e),
            }
        }
        Some(ip @ IpAddr::V6(_)) => Ok(vec![bind(SocketAddr::new(ip, port), Some(true))?]),
        Some(ip @ IpAddr::V4(_)) => Ok(vec![bind(SocketAddr::new(ip, port), None)?]),
    }
}

fn bind_one(addr: SocketAddr, v6only: Option<bool>) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(only) = v6only {
        socket.set_only_v6(only)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    // Accepted sockets inherit both: one setsockopt per listener instead
    // of one per connection. Urgent data is relayed in band (relay.rs).
    socket.set_tcp_nodelay(true)?;
    socket.set_out_of_band_inline(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// One socket passed by systemd (`LISTEN_FDS`).
#[derive(Debug)]
pub struct Activated {
    /// A listening TCP socket (`ListenStream=`) or a UDP one
    /// (`ListenDatagram=`), non-blocking.
    pub socket: Socket,
    pub l4: L4,
    pub addr: SocketAddr,
    /// Its name from `LISTEN_FDNAMES` (`FileDescriptorName=`), if any.
    pub name: Option<String>,
}

/// Take the sockets systemd passed to this process (if `LISTEN_PID` is us),
/// and unset the variables so no child inherits them. Sockets that are
/// neither listening TCP sockets nor UDP sockets are reported as errors and
/// closed.
pub fn take_activated() -> (Vec<Activated>, Vec<String>) {
    let mut found = Vec::new();
    let mut problems = Vec::new();
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse::<RawFd>().ok())
        .unwrap_or(0);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|s| s.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // Single-threaded here (called before the runtime starts).
        std::env::remove_var(var);
    }
    if !pid_ok {
        return (found, problems);
    }
    for i in 0..count.max(0) {
        let fd = LISTEN_FDS_START + i;
        // SAFETY: systemd passed fds 3..3+LISTEN_FDS to this very process
        // (LISTEN_PID matched) and nothing else in it owns them.
        let socket = unsafe { Socket::from_raw_fd(fd) };
        let name = names.get(i as usize).cloned().filter(|n| !n.is_empty());
        let _ = socket.set_cloexec(true);
        let checked = (|| -> io::Result<(L4, SocketAddr)> {
            let l4 = if socket.r#type()? == Type::DGRAM {
                // The protocol check refuses a datagram socket that is not
                // UDP (ListenDatagram= on a Unix path, say).
                if socket.protocol()? != Some(Protocol::UDP) {
                    return Err(io::Error::other("not a UDP socket"));
                }
                L4::Udp
            } else {
                if socket.r#type()? != Type::STREAM || !socket.is_listener()? {
                    return Err(io::Error::other(
                        "not a listening stream socket nor a datagram socket",
                    ));
                }
                // Inherited by every accepted socket; refused by anything not TCP.
                socket.set_tcp_nodelay(true)?;
                socket.set_out_of_band_inline(true)?;
                L4::Tcp
            };
            let addr = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("not an IP socket"))?;
            Ok((l4, addr))
        })();
        match checked.and_then(|a| socket.set_nonblocking(true).map(|()| a)) {
            Ok((l4, addr)) => found.push(Activated {
                socket,
                l4,
                addr,
                name,
            }),
            Err(e) => problems.push(format!(
                "socket activation: fd {fd}{}: {e}; ignored",
                name.map(|n| format!(" ({n})")).unwrap_or_default()
            )),
        }
    }
    (found, problems)
}

/// Does a socket bound at `addr` serve this listen spec?
pub fn activated_matches(listen: &Listen, addr: SocketAddr) -> bool {
    if addr.port() != listen.port.get() {
        return false;
    }
    match listen.addr {
        None => addr.ip().is_unspecified(),
        Some(ip) => super::proxy_protocol::unmap(addr).ip() == ip || addr.ip() == ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU16;

    fn listen(addr: Option<&str>, port: u16) -> Listen {
        Listen {
            addr: addr.map(|a| a.parse().expect("ip")),
            port: NonZeroU16::new(port).expect("port"),
        }
    }

    #[test]
    fn activation_matching() {
        let any6: SocketAddr = "[::]:80".parse().expect("addr");
        let any4: SocketAddr = "0.0.0.0:80".parse().expect("addr");
        let lo: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        assert!(activated_matches(&listen(None, 80), any6));
        assert!(activated_matches(&listen(None, 80), any4));
        assert!(!activated_matches(&listen(None, 80), lo));
        assert!(!activated_matches(&listen(None, 81), any6));
        assert!(activated_matches(&listen(Some("127.0.0.1"), 80), lo));
        assert!(!activated_matches(&listen(Some("127.0.0.1"), 80), any4));
    }

    #[test]
    fn accepted_sockets_inherit_nodelay_from_the_listener() {
        // The proxy sets TCP_NODELAY once on the listener and relies on
        // Linux copying it to each accepted socket.
        let l = bind_one("127.0.0.1:0".parse().expect("addr"), None).expect("bind");
        l.set_nonblocking(false).expect("blocking");
        let _c = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        assert!(s.nodelay().expect("getsockopt"));
        let s = socket2::SockRef::from(&s);
        assert!(s.out_of_band_inline().expect("getsockopt"));
    }

    #[test]
    fn bare_port_is_dual_stack() {
        // Port 0 is not a valid mapping, so bind an ephemeral port directly.
        let l = bind_one("[::]:0".parse().expect("addr"), Some(false)).expect("bind");
        l.set_nonblocking(false).expect("blocking");
        let port = l.local_addr().expect("addr").port();
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("v4 connect");
        let (_, peer) = l.accept().expect("accept");
        assert_eq!(
            peer.ip().to_string(),
            format!("::ffff:{}", s.local_addr().expect("a").ip())
        );
    }
}

//! PROXY protocol headers (HAProxy's spec, versions 1 and 2), sent to the
//! backend before any client byte so it learns the client's real address.
//!
//! The destination is the address the client connected to (the accepted
//! socket's local address). IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`,
//! what a dual-stack listener reports for IPv4 clients) are written as IPv4.

use std::net::{IpAddr, SocketAddr};

use crate::mapping::ProxyProtocol;

/// The 12-byte signature that starts every version 2 header.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// `::ffff:a.b.c.d` → `a.b.c.d`; anything else unchanged.
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

/// The header for `source` (the client) connecting to `destination`, or
/// nothing when the mapping sends none.
pub fn header(version: ProxyProtocol, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (src, dst) = (unmap(source), unmap(destination));
    match version {
        ProxyProtocol::Off => Vec::new(),
        ProxyProtocol::V1 => v1(src, dst).into_bytes(),
        ProxyProtocol::V2 => v2(src, dst),
    }
}

fn v1(src: SocketAddr, dst: SocketAddr) -> String {
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => format!(
            "PROXY TCP6 {} {} {} {}\r\n",
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        // Mixed families cannot come from one accepted socket; the spec's answer.
        _ => "PROXY UNKNOWN\r\n".to_owned(),
    }
}

fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => {
            out.push(0x00); // AF_UNSPEC: the receiver uses the real connection
            out.extend_from_slice(&0u16.to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn v1_ipv4() {
        let h = header(ProxyProtocol::V1, sa("10.0.0.2:5555"), sa("10.0.0.1:80"));
        assert_eq!(h, b"PROXY TCP4 10.0.0.2 10.0.0.1 5555 80\r\n");
    }

    #[test]
    fn v1_v4_mapped_is_tcp4() {
        let h = header(
            ProxyProtocol::V1,
            sa("[::ffff:10.0.0.2]:5555"),
            sa("[::ffff:10.0.0.1]:80"),
        );
        assert_eq!(h, b"PROXY TCP4 10.0.0.2 10.0.0.1 5555 80\r\n");
    }

    #[test]
    fn v1_ipv6() {
        let h = header(ProxyProtocol::V1, sa("[fd00::2]:5555"), sa("[fd00::1]:443"));
        assert_eq!(h, b"PROXY TCP6 fd00::2 fd00::1 5555 443\r\n");
    }

    #[test]
    fn v2_ipv4_layout() {
        let h = header(ProxyProtocol::V2, sa("1.2.3.4:258"), sa("5.6.7.8:80"));
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..], &[1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 0, 80]);
    }

    #[test]
    fn v2_ipv6_layout() {
        let h = header(ProxyProtocol::V2, sa("[fd00::2]:1"), sa("[fd00::1]:2"));
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
    }

    #[test]
    fn off_is_empty() {
        assert!(header(ProxyProtocol::Off, sa("1.2.3.4:1"), sa("5.6.7.8:2")).is_empty());
    }
}

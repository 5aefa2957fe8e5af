//! The PROXY protocol header builder, for any pair of addresses: a v1
//! header is one line of at most 107 bytes (the spec's limit), a v2 header
//! starts with the signature and its length field is the rest's length.
#![no_main]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use lowport::mapping::ProxyProtocol;
use lowport::proxy::proxy_protocol::header;

fn addr(v6: bool, bytes: [u8; 16], port: u16) -> SocketAddr {
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    };
    SocketAddr::new(ip, port)
}

fuzz_target!(|input: (bool, bool, [u8; 16], u16, bool, [u8; 16], u16)| {
    let (v2, src6, src, sport, dst6, dst, dport) = input;
    let (s, d) = (addr(src6, src, sport), addr(dst6, dst, dport));
    if v2 {
        let h = header(ProxyProtocol::V2, s, d);
        assert_eq!(&h[..12], b"\r\n\r\n\0\r\nQUIT\n");
        let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
        assert_eq!(h.len(), 16 + len, "{h:?}");
    } else {
        let h = header(ProxyProtocol::V1, s, d);
        assert!(h.len() <= 107, "{}", String::from_utf8_lossy(&h));
        assert!(h.starts_with(b"PROXY ") && h.ends_with(b"\r\n"));
        assert_eq!(h.iter().filter(|&&b| b == b'\n').count(), 1);
    }
    assert!(header(ProxyProtocol::Off, s, d).is_empty());
});

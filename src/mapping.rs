//! Domain types for one port mapping: where clients arrive and where they go.
//!
//! These are produced by [`crate::config`] after validation, so every value
//! here is already known to be well-formed: ports are non-zero, addresses are
//! parsed. No serde and no netlink here.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;

/// Transport protocol(s) a mapping applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Both,
}

impl Protocol {
    /// Does this mapping cover TCP?
    pub fn has_tcp(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Both)
    }

    /// Does this mapping cover UDP?
    pub fn has_udp(self) -> bool {
        matches!(self, Protocol::Udp | Protocol::Both)
    }

    /// The single protocols this value stands for, TCP first.
    pub fn l4s(self) -> impl Iterator<Item = L4> {
        let tcp = self.has_tcp().then_some(L4::Tcp);
        let udp = self.has_udp().then_some(L4::Udp);
        tcp.into_iter().chain(udp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Both => "both",
        })
    }
}

/// One layer-4 protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    /// IANA protocol number, as matched by `meta l4proto`.
    pub fn ip_proto(self) -> u8 {
        match self {
            L4::Tcp => libc::IPPROTO_TCP as u8,
            L4::Udp => libc::IPPROTO_UDP as u8,
        }
    }
}

impl fmt::Display for L4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        })
    }
}

/// Which PROXY protocol header, if any, the proxy sends to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
}

/// Where clients arrive: an optional local address and a port.
///
/// No address means every local address, IPv4 and IPv6. An unspecified
/// address (`0.0.0.0` or `[::]`) means every address of that family only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Listen {
    pub addr: Option<IpAddr>,
    pub port: NonZeroU16,
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            None => write!(f, "{}", self.port),
            Some(ip) => write!(f, "{}", SocketAddr::new(ip, self.port.get())),
        }
    }
}

/// Where a mapping sends its clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetHost {
    /// No host given: this machine, reached the way the client came.
    Local,
    /// A literal address.
    Ip(IpAddr),
    /// A host name, resolved when the rules are planned or a client connects.
    Name(String),
}

/// Target host and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: TargetHost,
    pub port: NonZeroU16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            TargetHost::Local => write!(f, "{}", self.port),
            TargetHost::Ip(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port.get())),
            TargetHost::Name(name) => write!(f, "{}:{}", name, self.port),
        }
    }
}

/// One validated port mapping.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// Position in the configuration (0-based); `-m` mappings follow the file's.
    pub index: usize,
    /// Optional label, used in logs, rule comments and `rules show`.
    pub name: Option<String>,
    pub listen: Listen,
    pub target: Target,
    pub protocol: Protocol,
    pub proxy_protocol: ProxyProtocol,
}

impl Mapping {
    /// A label for messages and rule comments: the name, or `#N`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("#{}", self.index + 1),
        }
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mapping #{}{} ({} -> {}, {})",
            self.index + 1,
            self.name
                .as_deref()
                .map(|n| format!(" \"{n}\""))
                .unwrap_or_default(),
            self.listen,
            self.target,
            self.protocol
        )
    }
}

/// Why `ip` cannot be where a mapping sends clients, if it cannot: the
/// unspecified address (0.0.0.0, ::), a multicast address, or the IPv4
/// broadcast address (also written as an IPv4-mapped IPv6 address). Checked
/// for literal targets and for every address a target name resolves to.
pub fn unusable_target(ip: IpAddr) -> Option<&'static str> {
    let ip = ip.to_canonical();
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        Some("the broadcast address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(name: Option<&str>, listen: &str, host: TargetHost, protocol: Protocol) -> Mapping {
        let listen: SocketAddr = listen.parse().unwrap();
        Mapping {
            index: 1,
            name: name.map(str::to_owned),
            listen: Listen {
                addr: Some(listen.ip()),
                port: NonZeroU16::new(listen.port()).unwrap(),
            },
            target: Target {
                host,
                port: NonZeroU16::new(8080).unwrap(),
            },
            protocol,
            proxy_protocol: ProxyProtocol::Off,
        }
    }

    #[test]
    fn messages_name_the_mapping_and_its_values() {
        let m = mapping(
            Some("web"),
            "10.0.0.1:80",
            TargetHost::Name("db.lan".into()),
            Protocol::Udp,
        );
        let text = m.to_string();
        for fact in ["#2", "\"web\"", "10.0.0.1:80", "db.lan:8080", "udp"] {
            assert!(text.contains(fact), "{fact} missing in {text}");
        }
        let m = mapping(
            None,
            "[fd00::1]:443",
            TargetHost::Ip("fd00::2".parse().unwrap()),
            Protocol::Both,
        );
        let text = m.to_string();
        for fact in ["#2", "[fd00::1]:443", "[fd00::2]:8080", "both"] {
            assert!(text.contains(fact), "{fact} missing in {text}");
        }
        let mut m = mapping(None, "127.0.0.1:80", TargetHost::Local, Protocol::Tcp);
        m.listen.addr = None;
        let text = m.to_string();
        for fact in ["(80 ", "-> 8080", "tcp"] {
            assert!(text.contains(fact), "{fact} missing in {text}");
        }
    }

    #[test]
    fn a_rule_comment_is_the_name_or_the_position() {
        let m = mapping(Some("web"), "10.0.0.1:80", TargetHost::Local, Protocol::Tcp);
        assert_eq!(m.label(), "web");
        let m = mapping(None, "10.0.0.1:80", TargetHost::Local, Protocol::Tcp);
        assert_eq!(m.label(), "#2");
    }

    #[test]
    fn single_protocols_are_what_the_kernel_matches() {
        // `meta l4proto` compares IANA numbers.
        assert_eq!(L4::Tcp.ip_proto(), 6);
        assert_eq!(L4::Udp.ip_proto(), 17);
        assert_eq!(L4::Tcp.to_string(), "tcp");
        assert_eq!(L4::Udp.to_string(), "udp");
        let l4s = |p: Protocol| p.l4s().collect::<Vec<_>>();
        assert_eq!(l4s(Protocol::Tcp), [L4::Tcp]);
        assert_eq!(l4s(Protocol::Udp), [L4::Udp]);
        assert_eq!(l4s(Protocol::Both), [L4::Tcp, L4::Udp]);
    }

    #[test]
    fn unusable_targets_are_named() {
        for (ip, what) in [
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::ffff:255.255.255.255", "broadcast"),
        ] {
            let got = unusable_target(ip.parse().unwrap());
            assert!(got.is_some_and(|w| w.contains(what)), "{ip}: {got:?}");
        }
        for ip in ["127.0.0.1", "10.0.0.1", "::1", "fd00::1", "::ffff:10.0.0.1"] {
            assert_eq!(unusable_target(ip.parse().unwrap()), None, "{ip}");
        }
    }
}

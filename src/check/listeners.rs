//! The sockets of this network namespace and who holds them:
//! `/proc/net/{tcp,udp}{,6}`, `/proc/*/fd`, `/etc/passwd`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::Config;
use crate::mapping::L4;

/// A process holding a socket.
#[derive(Debug, Clone)]
pub(super) struct Process {
    pub(super) pid: u32,
    pub(super) comm: String,
}

/// A listening TCP socket or a bound UDP socket of this network namespace.
#[derive(Debug, Clone)]
pub(super) struct Socket {
    pub(super) l4: L4,
    pub(super) addr: SocketAddr,
    pub(super) uid: u32,
    pub(super) processes: Vec<Process>,
}

impl Socket {
    pub(super) fn owner(&self) -> String {
        let who = user_name(self.uid).unwrap_or_else(|| format!("uid {}", self.uid));
        match self.processes.first() {
            Some(p) => format!("{} (pid {}) as {who}", p.comm, p.pid),
            None => format!("as {who}"),
        }
    }
}

pub(super) struct Listeners {
    pub(super) all: Vec<Socket>,
}

impl Listeners {
    pub(super) fn read() -> Listeners {
        let mut all = Vec::new();
        for (file, l4, state) in [
            ("tcp", L4::Tcp, "0A"),
            ("tcp6", L4::Tcp, "0A"),
            ("udp", L4::Udp, "07"),
            ("udp6", L4::Udp, "07"),
        ] {
            let Ok(text) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) else {
                continue;
            };
            all.extend(parse_proc_net(&text, l4, state));
        }
        let owners = socket_owners(all.iter().map(|(_, ino)| *ino).collect());
        Listeners {
            all: all
                .into_iter()
                .map(|(mut s, ino)| {
                    s.processes = owners.get(&ino).cloned().unwrap_or_default();
                    s
                })
                .collect(),
        }
    }

    /// The sockets of lowport processes on the listen ports of `config`:
    /// a proxy serving these mappings.
    pub(super) fn proxies(&self, config: &Config) -> Vec<&Socket> {
        self.all
            .iter()
            .filter(|s| {
                config
                    .mappings
                    .iter()
                    .any(|m| m.listen.port.get() == s.addr.port())
                    && s.processes.iter().any(|p| p.comm == "lowport")
            })
            .collect()
    }

    /// Sockets of `l4` on `port` that accept connections to `to`.
    pub(super) fn serving(&self, l4: L4, port: u16, to: IpAddr) -> Vec<&Socket> {
        self.all
            .iter()
            .filter(|s| s.l4 == l4 && s.addr.port() == port && accepts(s.addr.ip(), to))
            .collect()
    }
}

/// Does a socket bound to `bound` accept a connection to `to`? A `[::]`
/// socket takes IPv4 too (unless bindv6only, which is rare).
pub(super) fn accepts(bound: IpAddr, to: IpAddr) -> bool {
    match (bound, to) {
        (IpAddr::V6(b), _) if b.is_unspecified() => true,
        (IpAddr::V4(b), IpAddr::V4(_)) if b.is_unspecified() => true,
        (IpAddr::V6(b), IpAddr::V4(t)) => b.to_ipv4_mapped() == Some(t),
        (b, t) => b == t,
    }
}

/// Parse `/proc/net/tcp`-style text: sockets in `state`, with their inode.
pub(super) fn parse_proc_net(text: &str, l4: L4, state: &str) -> Vec<(Socket, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&state) {
                return None;
            }
            let addr = parse_hex_addr(f.get(1)?)?;
            let uid = f.get(7)?.parse().ok()?;
            let inode = f.get(9)?.parse().ok()?;
            Some((
                Socket {
                    l4,
                    addr,
                    uid,
                    processes: Vec::new(),
                },
                inode,
            ))
        })
        .collect()
}

/// `0100007F:1F90` → 127.0.0.1:8080. The address is the kernel's bytes
/// printed as native-endian 32-bit words.
pub(super) fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for chunk in ip.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let arr: [u8; 16] = bytes.try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(arr))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Which processes hold each of `inodes`: `/proc/PID/fd/*` links read
/// `socket:[INODE]`. Processes we may not look into are skipped.
pub(super) fn socket_owners(inodes: Vec<u64>) -> BTreeMap<u64, Vec<Process>> {
    let mut map: BTreeMap<u64, Vec<Process>> = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            let Some(ino) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&ino) {
                let comm = std::fs::read_to_string(entry.path().join("comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_default();
                let list = map.entry(ino).or_default();
                if !list.iter().any(|p| p.pid == pid) {
                    list.push(Process { pid, comm });
                }
            }
        }
    }
    map
}

pub(super) fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f[0].to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(l4: L4, addr: &str) -> Socket {
        Socket {
            l4,
            addr: addr.parse().unwrap(),
            uid: 1000,
            processes: Vec::new(),
        }
    }

    #[test]
    fn proc_net_addresses_decode() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000    65534        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:0050 00000000:0000 01 00000000:00000000 00:00000000 00000000    0        0 12346 1\n";
        let got = parse_proc_net(text, L4::Tcp, "0A");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(got[0].0.uid, 65534);
        assert_eq!(got[0].1, 12345);
        let v6 = parse_hex_addr("00000000000000000000000001000000:1F90").unwrap();
        assert_eq!(v6, "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn listeners_that_serve_an_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(accepts(ip("::"), ip("127.0.0.1")));
        assert!(accepts(ip("::"), ip("::1")));
        assert!(accepts(ip("0.0.0.0"), ip("192.0.2.1")));
        assert!(!accepts(ip("0.0.0.0"), ip("::1")));
        assert!(accepts(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(!accepts(ip("127.0.0.1"), ip("127.0.0.2")));
        assert!(!accepts(ip("127.0.0.1"), ip("::1")));
        assert!(accepts(ip("::ffff:127.0.0.1"), ip("127.0.0.1")));
        assert!(!accepts(ip("::ffff:127.0.0.1"), ip("127.0.0.2")));
        assert!(!accepts(ip("::1"), ip("127.0.0.1")));
        assert!(accepts(ip("::1"), ip("::1")));
        let l = Listeners {
            all: vec![
                socket(L4::Tcp, "127.0.0.1:8080"),
                socket(L4::Udp, "0.0.0.0:8080"),
                socket(L4::Tcp, "[::]:8443"),
                socket(L4::Tcp, "0.0.0.0:9000"),
            ],
        };
        let addrs = |l4, port, to| -> Vec<String> {
            l.serving(l4, port, ip(to))
                .iter()
                .map(|s| s.addr.to_string())
                .collect()
        };
        assert_eq!(addrs(L4::Tcp, 8080, "127.0.0.1"), ["127.0.0.1:8080"]);
        assert_eq!(addrs(L4::Udp, 8080, "127.0.0.1"), ["0.0.0.0:8080"]);
        assert!(addrs(L4::Tcp, 8080, "192.0.2.1").is_empty());
        assert_eq!(addrs(L4::Tcp, 8443, "192.0.2.1"), ["[::]:8443"]);
        assert!(addrs(L4::Udp, 8443, "192.0.2.1").is_empty());
        assert!(addrs(L4::Tcp, 9001, "127.0.0.1").is_empty());
    }

    #[test]
    fn lowport_proxies_on_listen_ports() {
        let held = |addr: &str, comm: &str| Socket {
            processes: vec![
                Process {
                    pid: 1,
                    comm: "nginx".into(),
                },
                Process {
                    pid: 2,
                    comm: comm.into(),
                },
            ],
            ..socket(L4::Tcp, addr)
        };
        let l = Listeners {
            all: vec![
                held("0.0.0.0:80", "lowport"),
                held("0.0.0.0:8080", "lowport"),
                held("0.0.0.0:443", "caddy"),
                socket(L4::Udp, "0.0.0.0:443"),
                held("[::]:443", "lowport"),
            ],
        };
        let config = |specs: &[&str]| crate::config::Config {
            mappings: specs
                .iter()
                .enumerate()
                .map(|(i, s)| crate::config::parse_spec(s, i).unwrap())
                .collect(),
            ..Default::default()
        };
        let addrs = |specs| -> Vec<String> {
            l.proxies(&config(specs))
                .iter()
                .map(|s| s.addr.to_string())
                .collect()
        };
        assert_eq!(addrs(&["80:8080", "443:8443"]), ["0.0.0.0:80", "[::]:443"]);
        assert!(addrs(&["81:8080"]).is_empty());
    }
}

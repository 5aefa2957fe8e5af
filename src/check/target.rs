//! Per mapping: does something listen on the target, and as whom? A
//! target on another host gets a TCP connection attempt.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::listeners::{Listeners, Socket};
use super::report::{Findings, Status};
use crate::firewall;
use crate::mapping::{Mapping, TargetHost, L4};

pub(super) fn check_target(f: &mut Findings, m: &Mapping, sockets: &Listeners) {
    let port = m.target.port.get();
    let label = m.label();
    let addrs: Vec<IpAddr> = match &m.target.host {
        TargetHost::Local => vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
        TargetHost::Ip(ip) => vec![*ip],
        TargetHost::Name(name) => {
            use std::net::ToSocketAddrs;
            match (name.as_str(), port).to_socket_addrs() {
                Ok(a) => a.map(|a| a.ip()).collect(),
                Err(e) => {
                    f.push(
                        Status::Problem,
                        "target",
                        format!("{label}: cannot resolve {name}: {e}"),
                        Some("use an address, or fix DNS".into()),
                    );
                    return;
                }
            }
        }
    };
    for l4 in m.protocol.l4s() {
        let local: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|a| {
                a.is_unspecified() || firewall::plan::HostView::is_local(&firewall::SystemHost, *a)
            })
            .collect();
        if local.is_empty() {
            // Another host: try a TCP connection, say nothing for UDP.
            let Some(&first) = addrs.first() else {
                f.push(
                    Status::Problem,
                    "target",
                    format!("{label}: the target host has no address"),
                    Some("use an address, or fix DNS".into()),
                );
                continue;
            };
            let addr = SocketAddr::new(first, port);
            if l4 == L4::Tcp {
                match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
                {
                    Ok(_) => f.ok(
                        "target",
                        format!("{label}: {addr} (another host) accepts TCP connections"),
                    ),
                    Err(e) => f.push(
                        Status::Problem,
                        "target",
                        format!(
                            "{label}: {addr} (another host) does not accept TCP connections: {e}"
                        ),
                        Some(format!(
                            "start the web server on {addr}, or check the route to it"
                        )),
                    ),
                }
            } else {
                f.warn(
                    "target",
                    format!("{label}: udp {addr} is on another host; not checked"),
                    None,
                );
            }
            continue;
        }
        let mut found: Vec<&Socket> = Vec::new();
        for a in &local {
            if a.is_unspecified() {
                found.extend(
                    sockets
                        .all
                        .iter()
                        .filter(|s| s.l4 == l4 && s.addr.port() == port),
                );
            } else {
                found.extend(sockets.serving(l4, port, *a));
            }
        }
        if found.is_empty() {
            let what = match &m.target.host {
                TargetHost::Local => format!("port {port}"),
                _ => SocketAddr::new(local[0], port).to_string(),
            };
            f.push(
                Status::Problem,
                "target",
                format!("{label}: nothing listens on {l4} {what}"),
                Some(format!(
                    "start the web server on {l4} {what}, as an unprivileged user"
                )),
            );
            continue;
        }
        // A redirect goes to the address the client came in on, so a
        // server bound to loopback only is out of reach of remote clients.
        if m.target.host == TargetHost::Local && found.iter().all(|s| s.addr.ip().is_loopback()) {
            f.push(
                Status::Problem,
                "target",
                format!("{label}: {l4} {} listens on loopback only, but remote clients are redirected to the address they came in on", found[0].addr),
                Some(format!("bind the server to 0.0.0.0:{port} or [::]:{port}, or write `to: \"127.0.0.1:{port}\"` in the mapping")),
            );
            continue;
        }
        let s = found[0];
        if s.uid == 0 {
            f.warn(
                "target",
                format!("{label}: {l4} {} is served by {} — root, which is what lowport is there to avoid", s.addr, s.owner()),
                Some("run the web server as an unprivileged user".into()),
            );
        } else {
            f.ok(
                "target",
                format!("{label}: {l4} {} ← {}", s.addr, s.owner()),
            );
        }
    }
}

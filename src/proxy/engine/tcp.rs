//! TCP on the event loop, up to a relaying connection: listening sockets,
//! accepting (max_connections, max_connections_per_client, the back-off
//! when descriptors run out) and connecting to the backend, address by
//! address, within connect_timeout.

use std::cmp::Reverse;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustix::event::epoll;
use tracing::{debug, info, warn};

use super::conn::{Conn, Phase};
use super::{data, flags, ms, Engine, Entry, Resolve, BACKOFF};
use crate::mapping::{Listen, Mapping, ProxyProtocol, TargetHost};
use crate::proxy::proxy_protocol::{self, unmap};
use crate::proxy::relay::{self, Direction, End, Pump};
use crate::proxy::stats::inc;

/// Accept back-off after EMFILE and the like: doubling, within these bounds.
const MIN_BACKOFF_MS: u64 = 10;
const MAX_BACKOFF_MS: u64 = 1000;

/// A listening socket.
pub(super) struct Listener {
    pub(super) sock: socket2::Socket,
    pub(super) generation: u32,
    pub(super) key: Listen,
    pub(super) mapping: Arc<Mapping>,
}

impl Engine {
    pub(super) fn add_listener(
        &mut self,
        key: Listen,
        mapping: Arc<Mapping>,
        sock: std::net::TcpListener,
    ) -> io::Result<()> {
        sock.set_nonblocking(true)?;
        let k = self.add_listening(sock, |sock, generation| {
            Entry::Listener(Listener {
                sock: sock.into(),
                generation,
                key,
                mapping,
            })
        })?;
        // Connections may already wait in its backlog.
        self.accept(k);
        Ok(())
    }

    /// Accept from every listener (accepting resumed below the cap).
    pub(super) fn accept_everywhere(&mut self) {
        for k in self.keys(|e| matches!(e, Entry::Listener(_))) {
            self.accept(k);
        }
    }

    /// Accept until the backlog is empty, the cap is reached or accept fails.
    pub(super) fn accept(&mut self, key: usize) {
        loop {
            if self.active >= self.settings.max_connections.get() {
                // Clients wait in the backlog instead of being refused.
                self.paused = true;
                return;
            }
            if self.backing_off() {
                return;
            }
            let Some(Entry::Listener(l)) = self.entries.get_mut(key) else {
                return;
            };
            match l.sock.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) {
                Ok((sock, addr)) => {
                    let mapping = Arc::clone(&l.mapping);
                    if self.starved > 0 {
                        info!(
                            "accepting again after {} failed accept(s) or backend socket(s)",
                            self.starved
                        );
                        self.starved = 0;
                        self.backoff_ms = 0;
                    }
                    let Some(peer) = addr.as_socket() else {
                        continue;
                    };
                    if !self.admit(peer) {
                        // Reset at once: left in the backlog, it would hold
                        // up every client queued behind it.
                        let sock = TcpStream::from(sock);
                        relay::arm_reset(&sock);
                        continue;
                    }
                    self.start_conn(sock.into(), peer, mapping);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    inc(&self.stats.accept_errors);
                    if crate::proxy::is_resource_error(&e) {
                        let what = format!(
                            "accept on {:?}",
                            l.sock.local_addr().ok().and_then(|a| a.as_socket())
                        );
                        self.back_off(&what, &e);
                        return;
                    }
                    // Per-connection errors (ECONNABORTED and the like).
                    debug!("accept: {e}");
                }
            }
        }
    }

    /// Count a new connection against its client's share
    /// (max_connections_per_client); false, counted and logged, when the
    /// client has used it up.
    pub(super) fn admit(&mut self, peer: SocketAddr) -> bool {
        let client = client_key(peer);
        let limit = self.settings.max_connections_per_client.get();
        let count = self.clients.entry(client).or_insert(0);
        if *count as usize >= limit {
            self.stats.client_limited(client, limit);
            return false;
        }
        *count += 1;
        true
    }

    /// A connection that [`Engine::admit`] counted has ended.
    pub(super) fn release(&mut self, peer: SocketAddr) {
        let client = client_key(peer);
        if let Some(count) = self.clients.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                self.clients.remove(&client);
                // After a crowd of clients has gone, give the memory back.
                if self.clients.capacity() > 4 * self.clients.len() + 1024 {
                    self.clients.shrink_to(2 * self.clients.len());
                }
            }
        }
    }

    pub(super) fn backing_off(&self) -> bool {
        self.backoff_until.is_some_and(|t| t > self.now)
    }

    /// Out of file descriptors or memory: stop accepting and making
    /// backend sockets for a while (doubling up to 1 s) instead of spinning
    /// on a listener that stays readable, and so that queued clients wait in
    /// the backlog to be served rather than be accepted only to be reset.
    pub(super) fn back_off(&mut self, what: &str, e: &io::Error) {
        self.starved += 1;
        if self.backing_off() {
            return;
        }
        if self.starved == 1 {
            warn!("{what}: {e}; backing off and retrying");
        }
        self.backoff_ms = (self.backoff_ms * 2).clamp(MIN_BACKOFF_MS, MAX_BACKOFF_MS);
        let due = self.now + self.backoff_ms;
        self.backoff_until = Some(due);
        self.timers.push(Reverse((due, BACKOFF, 0)));
    }

    pub(super) fn start_conn(
        &mut self,
        client: TcpStream,
        peer: SocketAddr,
        mapping: Arc<Mapping>,
    ) {
        self.active += 1;
        inc(&self.stats.accepted);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        // TCP_NODELAY: inherited from the listener (see listen.rs). The
        // accepted socket's own address: only a PROXY header needs it (one
        // getsockname per connection saved otherwise).
        let local = if mapping.proxy_protocol != ProxyProtocol::Off {
            match client.local_addr() {
                Ok(a) => Some(a),
                Err(e) => {
                    debug!(client = %unmap(peer), "client gone before it was served: {e}");
                    self.release(peer);
                    self.active -= 1;
                    self.stats.active.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        } else {
            None
        };
        let header = match (mapping.proxy_protocol, local) {
            (ProxyProtocol::V1 | ProxyProtocol::V2, Some(local)) => {
                proxy_protocol::header(mapping.proxy_protocol, peer, local)
            }
            _ => Vec::new(),
        };
        let port = mapping.target.port.get();
        let (addrs, name) = match &mapping.target.host {
            // "This machine": loopback, in the family the client came in
            // first (a connection's two addresses share their family, and
            // a dual-stack socket's IPv4 clients are unmapped here).
            TargetHost::Local => {
                let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
                let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
                if unmap(peer).is_ipv6() {
                    (vec![v6, v4], None)
                } else {
                    (vec![v4, v6], None)
                }
            }
            TargetHost::Ip(ip) => (vec![SocketAddr::new(*ip, port)], None),
            TargetHost::Name(name) => (Vec::new(), Some(name.clone())),
        };
        let generation = self.generation();
        let conn = Conn {
            // Optimistic: a client usually sends its request at once, and by the
            // time the backend is connected it is there to read, one trip
            // through epoll_wait earlier (an EAGAIN read costs less).
            client: End::new(client, true, true),
            backend: None,
            pumps: [
                Pump::with_pending(Direction::ToBackend, header),
                Pump::new(Direction::ToClient),
            ],
            mapping,
            peer,
            addrs,
            failures: String::new(),
            phase: Phase::Resolving { since: self.now },
            generation,
            registered: [None, None],
            last_active: self.now,
            half_closed: None,
            timer_at: u64::MAX,
        };
        let entry = self.entries.vacant_entry();
        let key = entry.key();
        entry.insert(Entry::Conn(Box::new(conn)));
        match name {
            Some(name) => {
                let asked = self.resolver.send(Resolve {
                    conn: key,
                    generation,
                    name,
                    port,
                });
                if asked.is_err() {
                    self.refuse(key, "name resolution is not available".to_owned());
                } else {
                    // getaddrinfo has its own timeouts (5 s per try and
                    // server by default), but a client should not wait on
                    // them longer than on a backend that does not answer.
                    let due = self.now + ms(self.settings.connect_timeout);
                    self.arm(key, due);
                }
            }
            None => self.connect_next(key),
        }
    }

    /// Try the connection's next backend address.
    pub(super) fn connect_next(&mut self, key: usize) {
        loop {
            let backing_off = self.backing_off();
            let Some(Entry::Conn(c)) = self.entries.get_mut(key) else {
                return;
            };
            if c.addrs.is_empty() {
                let why = std::mem::take(&mut c.failures);
                self.refuse(key, why);
                return;
            }
            if backing_off {
                c.phase = Phase::Starved;
                if let Some(due) = self.backoff_until {
                    self.arm(key, due);
                }
                return;
            }
            // It stays first in `addrs` while it is tried.
            let addr = c.addrs[0];
            match connect_one(addr) {
                Ok((sock, Handshake::Connected)) => {
                    c.backend = Some(End::new(sock, false, true));
                    self.established(key);
                    return;
                }
                Ok((sock, Handshake::Ended)) => {
                    // Over, with an error flagged: SO_ERROR says which.
                    let e = match sock.take_error() {
                        Ok(None) => {
                            c.backend = Some(End::new(sock, false, true));
                            self.established(key);
                            return;
                        }
                        Ok(Some(e)) | Err(e) => e,
                    };
                    self.connect_failed(key, format!("{addr}: {e}"));
                }
                Ok((sock, Handshake::Pending)) => {
                    let f = flags(false, true);
                    if let Err(e) = epoll::add(&self.epoll, &sock, data(key, c.generation, 1), f) {
                        self.connect_failed(key, format!("{addr}: {e}"));
                        continue;
                    }
                    c.backend = Some(End::new(sock, false, false));
                    c.registered[1] = Some(f);
                    c.phase = Phase::Connecting { since: self.now };
                    let due = self.now + ms(self.settings.connect_timeout);
                    self.arm(key, due);
                    return;
                }
                Err(Attempt::Failed(e)) => self.connect_failed(key, format!("{addr}: {e}")),
                Err(Attempt::Socket(e)) if crate::proxy::is_resource_error(&e) => {
                    // Not the backend's fault: try it again later.
                    c.phase = Phase::Starved;
                    self.back_off("cannot make a backend socket", &e);
                    if let Some(due) = self.backoff_until {
                        self.arm(key, due);
                    }
                    return;
                }
                Err(Attempt::Socket(e)) => {
                    self.connect_failed(key, format!("{addr}: cannot make a socket: {e}"));
                }
            }
        }
    }

    /// Record why the address being tried failed, and drop it (the next
    /// one is tried by the caller).
    pub(super) fn connect_failed(&mut self, key: usize, why: String) {
        inc(&self.stats.connect_errors);
        if let Some(Entry::Conn(c)) = self.entries.get_mut(key) {
            if !c.addrs.is_empty() {
                c.addrs.remove(0);
            }
            if !c.failures.is_empty() {
                c.failures.push_str("; ");
            }
            c.failures.push_str(&why);
            // Its socket, if any, closes (and leaves epoll) here.
            c.backend = None;
            c.registered[1] = None;
        }
    }

    /// The backend socket became writable (or failed) while connecting.
    pub(super) fn connect_ended(&mut self, key: usize) {
        let Some(Entry::Conn(c)) = self.entries.get_mut(key) else {
            return;
        };
        let Some(b) = &c.backend else { return };
        if !b.writable {
            return;
        }
        // Writable means the handshake ended: in a connection or an error.
        // A socket still connecting has no peer: then the writability was
        // not this handshake's, and the wait goes on.
        match b.sock.take_error() {
            Ok(None) => match b.sock.peer_addr() {
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                    if let Some(b) = &mut c.backend {
                        b.writable = false;
                    }
                }
                _ => self.established(key),
            },
            Ok(Some(e)) | Err(e) => {
                let addr = c.addrs.first().copied();
                let why = match addr {
                    Some(a) => format!("{a}: {e}"),
                    None => e.to_string(),
                };
                self.connect_failed(key, why);
                self.connect_next(key);
            }
        }
    }

    /// No address answered: reset the client.
    pub(super) fn refuse(&mut self, key: usize, why: String) {
        if let Some(Entry::Conn(c)) = self.entries.get(key) {
            conn_log!(
                warn,
                c,
                "no backend for {}: {why}; closing the client",
                c.mapping.target
            );
            relay::arm_reset(&c.client.sock);
        }
        inc(&self.stats.refused);
        self.remove(key);
    }

    pub(super) fn established(&mut self, key: usize) {
        let Some(Entry::Conn(c)) = self.entries.get_mut(key) else {
            return;
        };
        c.phase = Phase::Relaying;
        c.addrs = Vec::new();
        c.failures = String::new();
        c.last_active = self.now;
        conn_log!(debug, c, backend = ?c.backend.as_ref().and_then(|b| b.sock.peer_addr().ok()), "connected");
        let due = self.now + ms(self.settings.idle_timeout);
        self.arm(key, due);
        self.drive(key);
    }
}

/// The address a client is counted under for max_connections_per_client:
/// an IPv4 address as it is (also when it came v4-mapped on a dual-stack
/// socket), an IPv6 address by its /64, the block one subscriber's LAN
/// usually gets (a single host can pick any address in it).
fn client_key(peer: SocketAddr) -> IpAddr {
    match unmap(peer).ip() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
        v4 => v4,
    }
}

/// Why one connect attempt failed.
enum Attempt {
    /// No socket could be made.
    Socket(io::Error),
    /// connect(2) itself failed.
    Failed(io::Error),
}

/// Where a connecting socket's handshake stands right after connect(2).
enum Handshake {
    /// Writable with no error flagged.
    Connected,
    /// Over, with an error flagged (SO_ERROR tells which).
    Ended,
    /// Still going.
    Pending,
}

/// One non-blocking connect, with TCP_NODELAY set before it. On loopback
/// (and often on a LAN) the handshake is over by the time connect(2)
/// returns EINPROGRESS: a zero-timeout poll(2) sees it, and the connection
/// goes on without a trip through the event loop or a timer.
fn connect_one(addr: SocketAddr) -> Result<(TcpStream, Handshake), Attempt> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(Attempt::Socket)?;
    socket.set_tcp_nodelay(true).map_err(Attempt::Socket)?;
    // Urgent data is relayed in band (see relay.rs).
    socket
        .set_out_of_band_inline(true)
        .map_err(Attempt::Socket)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(Attempt::Failed(e)),
    }
    let now = handshake_now(&socket);
    Ok((socket.into(), now))
}

fn handshake_now(socket: &socket2::Socket) -> Handshake {
    let mut pfd = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a socket we own, and a zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n != 1 {
        Handshake::Pending
    } else if pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
        Handshake::Ended
    } else if pfd.revents & libc::POLLOUT != 0 {
        Handshake::Connected
    } else {
        Handshake::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 clients count by address, also v4-mapped; IPv6 ones by /64.
    #[test]
    fn clients_are_counted_by_address_and_slash_64() {
        let key = |s: &str| client_key(s.parse().expect("socket address"));
        assert_eq!(key("192.0.2.1:1000"), key("[::ffff:192.0.2.1]:2000"));
        assert_ne!(key("192.0.2.1:1000"), key("192.0.2.2:1000"));
        assert_eq!(key("[2001:db8:1:2::1]:1"), key("[2001:db8:1:2:ffff::9]:2"));
        assert_ne!(key("[2001:db8:1:2::1]:1"), key("[2001:db8:1:3::1]:1"));
        assert_eq!(
            key("[2001:db8:1:2:3:4:5:6]:1"),
            "2001:db8:1:2::".parse::<IpAddr>().expect("ip")
        );
    }
}

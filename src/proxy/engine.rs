//! The proxy's data plane: one thread, one epoll instance, every listening
//! socket and every connection. It accepts, connects to the backend, relays
//! ([`super::relay`]) and keeps each connection's timeouts; the control
//! plane (signals, reloads, name resolution, shutdown; tokio, in
//! [`super`]) talks to it through [`EngineHandle`].
//!
//! Why not a tokio task per connection, as before: measured against its
//! peers (benches/peers.rs), tokio's fixed costs were what set lowport
//! apart, not the relay. A tokio socket is registered for reading and
//! writing, edge-triggered, for good; so while one direction waits for its
//! destination to drain, every segment arriving at its source still wakes
//! the thread (7288 epoll_wait per 11150 splices in one bulk stream, against
//! 529 per 18952 for systemd-socket-proxyd, which switches interest). Each
//! socket also carried a 256-byte registration and each connection a task,
//! and dropping a socket cost an `epoll_ctl(DEL)` that close(2) does anyway.
//! Here a socket is registered for what its connection waits for and
//! nothing else, a connection is one boxed [`Conn`] of a few hundred bytes,
//! and closing a socket is one close(2).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use slab::Slab;
use tracing::{debug, info, warn};

use super::pipe::PipePool;
use super::proxy_protocol::{self, unmap};
use super::relay::{self, Ctx, Direction, End, Outcome, Pump, Wait, COPY_CHUNK};
use super::stats::{inc, Stats};
use crate::config::ProxySettings;
use crate::mapping::{Listen, Mapping, ProxyProtocol, TargetHost};

mod udp;

/// What the control plane asks of the event loop.
pub enum Command {
    /// Serve these listening sockets for `mapping`.
    Listen {
        key: Listen,
        mapping: Arc<Mapping>,
        sockets: Vec<std::net::TcpListener>,
    },
    /// New connections on `key` go to this mapping (reload).
    Remap { key: Listen, mapping: Arc<Mapping> },
    /// Close the listening sockets of `key` (reload); its live connections
    /// go on.
    Unlisten { key: Listen },
    /// Serve these UDP sockets for `mapping`.
    UdpListen {
        key: Listen,
        mapping: Arc<Mapping>,
        sockets: Vec<std::net::UdpSocket>,
    },
    /// New UDP flows on `key` go to this mapping (reload).
    UdpRemap { key: Listen, mapping: Arc<Mapping> },
    /// Close the UDP sockets of `key` and its flows (reload).
    UdpUnlisten { key: Listen },
    /// New timeouts and connection cap (reload).
    Settings(Arc<ProxySettings>),
    /// The answer to a [`Resolve`] request (for a TCP connection or a
    /// UDP flow).
    Resolved {
        conn: usize,
        generation: u32,
        addrs: Result<Vec<SocketAddr>, String>,
    },
    /// Close every listening socket, say how many connections are live,
    /// and end once they have all ended.
    Drain(tokio::sync::oneshot::Sender<u64>),
    /// Reset every connection and end now.
    HardStop,
}

/// A backend name to resolve, asked of the control plane (getaddrinfo
/// blocks; the event loop must not).
pub struct Resolve {
    pub conn: usize,
    pub generation: u32,
    pub name: String,
    pub port: u16,
}

/// Sends commands to the event loop and wakes it.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    wake: Arc<OwnedFd>,
}

impl EngineHandle {
    /// Queue `command`; false when the event loop has ended.
    pub fn send(&self, command: Command) -> bool {
        if self.tx.send(command).is_err() {
            return false;
        }
        // An eventfd write only fails when its counter would overflow, and
        // then a wake-up is pending anyway.
        let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        true
    }
}

/// epoll data of the wake-up eventfd. Any other value is a slab key (high
/// 32 bits), the entry's generation (31 bits) and the side (low bit; 0:
/// client or listener, 1: backend): see [`data`].
const WAKE: u64 = u64::MAX;

/// Timer key of the engine-wide back-off.
const BACKOFF: usize = usize::MAX;

/// Events read per epoll_wait.
const EVENTS: usize = 256;

/// Accept back-off after EMFILE and the like: doubling, within these bounds.
const MIN_BACKOFF_MS: u64 = 10;
const MAX_BACKOFF_MS: u64 = 1000;

/// A listening socket.
struct Listener {
    sock: socket2::Socket,
    generation: u32,
    key: Listen,
    mapping: Arc<Mapping>,
}

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the control plane to resolve the target's name, asked
    /// at `since`; the lookup gets `connect_timeout` too.
    Resolving {
        since: u64,
    },
    /// No file descriptor was left for the backend socket: it is tried
    /// again when the back-off ends.
    Starved,
    /// A connect to the backend is under way (its socket waits for
    /// writability), started at `since`.
    Connecting {
        since: u64,
    },
    Relaying,
}

/// One client connection.
struct Conn {
    client: End,
    backend: Option<End>,
    pumps: [Pump; 2],
    mapping: Arc<Mapping>,
    peer: SocketAddr,
    /// Addresses still to try, in order (while connecting).
    addrs: Vec<SocketAddr>,
    /// Why earlier addresses failed (while connecting).
    failures: String,
    phase: Phase,
    generation: u32,
    /// What each socket is registered for (client, backend); None: not
    /// registered.
    registered: [Option<EventFlags>; 2],
    /// ms since the loop started: a byte last moved (or the connection
    /// began); one direction ended; the earliest timer queued for it.
    last_active: u64,
    half_closed: Option<u64>,
    timer_at: u64,
}

enum Entry {
    Listener(Listener),
    Conn(Box<Conn>),
    UdpListener(Box<udp::UdpListener>),
    Flow(Box<udp::Flow>),
    FlowResolving(Box<udp::Resolving>),
}

/// The event loop and everything it owns.
pub struct Engine {
    epoll: OwnedFd,
    wake: Arc<OwnedFd>,
    rx: mpsc::Receiver<Command>,
    tx: mpsc::Sender<Command>,
    resolver: tokio::sync::mpsc::UnboundedSender<Resolve>,
    entries: Slab<Entry>,
    /// (due, slab key, generation), earliest first. A connection re-queues
    /// its timer only when it fires early, not at every byte.
    timers: BinaryHeap<Reverse<(u64, usize, u32)>>,
    start: Instant,
    /// ms since `start`, read once per wake-up.
    now: u64,
    settings: Arc<ProxySettings>,
    stats: Arc<Stats>,
    pool: Arc<PipePool>,
    buf: Box<[u8]>,
    active: usize,
    /// Accepting paused at max_connections.
    paused: bool,
    /// Listeners closed; ending once no connection is left.
    draining: bool,
    /// Out of file descriptors (or socket memory): nothing is accepted and
    /// no backend socket made until then (ms since the loop started).
    backoff_until: Option<u64>,
    backoff_ms: u64,
    /// Accepts and backend sockets that failed for want of resources since
    /// the last accept that worked.
    starved: u64,
    next_generation: u32,
    /// Live connections per client ([`client_key`]), for
    /// max_connections_per_client. An entry goes when its count drops to
    /// zero: the table never holds more than the live connections.
    clients: HashMap<IpAddr, u32>,
    udp: udp::Udp,
}

/// A duration in the timers' unit, milliseconds, capped at [`NEVER`]: every
/// deadline is a time since the loop started plus one of these, and neither
/// can reach 2^62, so their sum cannot overflow whatever the settings say.
/// (The configuration refuses durations past a week or a day; before it did,
/// `now + idle_timeout` wrapped to the past and every connection was closed
/// at once as idle.)
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).min(NEVER)
}

/// A deadline no timer reaches: 2^62 ms, about 146 million years.
const NEVER: u64 = 1 << 62;

/// What epoll hands back with an event: the slab key, the generation of
/// the entry registered there and the side. The generation is what makes a
/// stale event harmless: an entry that ends while a batch of events is
/// being handled frees its key, a client accepted later in the same batch
/// takes that key (the slab reuses the last freed slot first), and an event
/// the ended entry still has in the batch (its peer's FIN, its socket's
/// writability) must not be applied to the newcomer. Generations wrap
/// after 2^31 entries, far more than can start and end within one batch.
fn data(key: usize, generation: u32, side: usize) -> EventData {
    // Keys stay far below 2^32: every entry is a socket (RLIMIT_NOFILE).
    EventData::new_u64(
        (key as u64) << 32 | u64::from(generation & GENERATION_MASK) << 1 | side as u64,
    )
}

/// The slab key, generation and side an event's data carries.
fn parse_data(d: u64) -> (usize, u32, usize) {
    (
        (d >> 32) as usize,
        (d >> 1) as u32 & GENERATION_MASK,
        (d & 1) as usize,
    )
}

/// Generations as far as event data holds them.
const GENERATION_MASK: u32 = u32::MAX >> 1;

/// Edge-triggered, for exactly what is waited for: reading (with the
/// peer's FIN and urgent data), writing, or (empty) neither — errors and
/// hang-ups are always reported.
fn flags(read: bool, write: bool) -> EventFlags {
    let mut f = EventFlags::ET;
    if read {
        f |= EventFlags::IN | EventFlags::RDHUP | EventFlags::PRI;
    }
    if write {
        f |= EventFlags::OUT;
    }
    f
}

/// A log event about one connection, naming its client and mapping. Fields
/// are evaluated only when the level is enabled.
macro_rules! conn_log {
    ($level:ident, $conn:expr, $($arg:tt)+) => {
        tracing::$level!(client = %unmap($conn.peer), mapping = %$conn.mapping.label(), $($arg)+)
    };
}

impl Engine {
    pub fn new(
        settings: Arc<ProxySettings>,
        stats: Arc<Stats>,
        pool: Arc<PipePool>,
        resolver: tokio::sync::mpsc::UnboundedSender<Resolve>,
    ) -> io::Result<Engine> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let wake = Arc::new(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?);
        epoll::add(
            &epoll,
            &*wake,
            EventData::new_u64(WAKE),
            EventFlags::IN | EventFlags::ET,
        )?;
        let (tx, rx) = mpsc::channel();
        Ok(Engine {
            epoll,
            wake,
            rx,
            tx,
            resolver,
            entries: Slab::new(),
            timers: BinaryHeap::new(),
            start: Instant::now(),
            now: 0,
            settings,
            stats,
            pool,
            buf: vec![0u8; COPY_CHUNK].into_boxed_slice(),
            active: 0,
            paused: false,
            draining: false,
            backoff_until: None,
            backoff_ms: 0,
            starved: 0,
            next_generation: 0,
            clients: HashMap::new(),
            udp: udp::Udp::new(),
        })
    }

    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            tx: self.tx.clone(),
            wake: Arc::clone(&self.wake),
        }
    }

    /// Run until drained or hard-stopped.
    pub fn run(mut self) -> io::Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS);
        while !(self.draining && self.active == 0) {
            if self.turn(&mut events, None)? {
                self.hard_stop();
                return Ok(());
            }
        }
        Ok(())
    }

    /// One wait and what it brought: events, commands, timers. `max_ms`
    /// bounds the wait (tests drive the loop this way). True on HardStop.
    fn turn(&mut self, events: &mut Vec<epoll::Event>, max_ms: Option<u64>) -> io::Result<bool> {
        let due = self
            .timers
            .peek()
            .map(|Reverse((due, _, _))| due.saturating_sub(self.now));
        let wait_ms = match (due, max_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = wait_ms.map(|ms| rustix::event::Timespec {
            tv_sec: (ms / 1000) as i64,
            tv_nsec: ((ms % 1000) * 1_000_000) as i64,
        });
        events.clear();
        match epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(events),
            timeout.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        self.now = ms(self.start.elapsed());
        let mut stop = false;
        for ev in events.iter() {
            let d = ev.data.u64();
            if d == WAKE {
                stop |= self.commands();
            } else {
                let (key, generation, side) = parse_data(d);
                self.event(key, generation, side, ev.flags);
            }
        }
        if stop {
            return Ok(true);
        }
        self.fire_timers();
        if self.paused && self.active < self.settings.max_connections.get() {
            self.paused = false;
            self.accept_everywhere();
        }
        Ok(false)
    }

    // ---- commands -------------------------------------------------------

    /// Apply queued commands; true on HardStop.
    fn commands(&mut self) -> bool {
        let mut counter = [0u8; 8];
        let _ = rustix::io::read(&*self.wake, &mut counter);
        while let Ok(command) = self.rx.try_recv() {
            match command {
                Command::Listen {
                    key,
                    mapping,
                    sockets,
                } => {
                    for s in sockets {
                        if let Err(e) = self.add_listener(key, Arc::clone(&mapping), s) {
                            warn!("cannot serve a listening socket for {mapping}: {e}");
                        }
                    }
                }
                Command::Remap { key, mapping } => {
                    for (_, e) in &mut self.entries {
                        if let Entry::Listener(l) = e {
                            if l.key == key {
                                l.mapping = Arc::clone(&mapping);
                            }
                        }
                    }
                }
                Command::Unlisten { key } => {
                    self.entries
                        .retain(|_, e| !matches!(e, Entry::Listener(l) if l.key == key));
                }
                Command::UdpListen {
                    key,
                    mapping,
                    sockets,
                } => {
                    for s in sockets {
                        if let Err(e) = self.add_udp_listener(key, Arc::clone(&mapping), s) {
                            warn!("cannot serve a UDP socket for {mapping}: {e}");
                        }
                    }
                }
                Command::UdpRemap { key, mapping } => self.udp_remap(key, &mapping),
                Command::UdpUnlisten { key } => self.udp_unlisten(|l| l.key == key),
                Command::Settings(s) => {
                    self.settings = s;
                    self.udp_settings_changed();
                    // Every timer was armed for the old timeouts: look at
                    // each connection again now, so a shorter idle_timeout,
                    // fin_timeout or connect_timeout holds for live
                    // connections too (a longer one re-arms later).
                    let keys: Vec<usize> = self
                        .entries
                        .iter()
                        .filter(|(_, e)| matches!(e, Entry::Conn(_)))
                        .map(|(k, _)| k)
                        .collect();
                    for key in keys {
                        self.arm(key, self.now);
                    }
                }
                Command::Resolved {
                    conn,
                    generation,
                    addrs,
                } => {
                    if matches!(self.entries.get(conn), Some(Entry::FlowResolving(_))) {
                        self.flow_resolved(conn, generation, addrs);
                    } else {
                        self.resolved(conn, generation, addrs);
                    }
                }
                Command::Drain(reply) => {
                    self.entries.retain(|_, e| !matches!(e, Entry::Listener(_)));
                    // UDP has no end of stream to wait for: its flows close now.
                    self.udp_unlisten(|_| true);
                    self.draining = true;
                    let _ = reply.send(self.active as u64);
                }
                Command::HardStop => return true,
            }
        }
        false
    }

    fn add_listener(
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

    /// Register a listening socket (TCP or UDP) for reading under a new
    /// generation, and store the entry `make` builds from it; its key.
    fn add_listening<S: AsFd>(
        &mut self,
        sock: S,
        make: impl FnOnce(S, u32) -> Entry,
    ) -> io::Result<usize> {
        let generation = self.generation();
        let entry = self.entries.vacant_entry();
        let key = entry.key();
        epoll::add(
            &self.epoll,
            &sock,
            data(key, generation, 0),
            EventFlags::IN | EventFlags::ET,
        )?;
        entry.insert(make(sock, generation));
        Ok(key)
    }

    fn generation(&mut self) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1) & GENERATION_MASK;
        self.next_generation
    }

    fn hard_stop(&mut self) {
        for k in self.keys(|e| matches!(e, Entry::Conn(_))) {
            self.finish(k, Outcome::Shutdown);
        }
    }

    /// The slab keys of the entries `which` picks (to act on each while
    /// the slab changes).
    fn keys(&self, which: impl Fn(&Entry) -> bool) -> Vec<usize> {
        self.entries
            .iter()
            .filter(|(_, e)| which(e))
            .map(|(k, _)| k)
            .collect()
    }

    // ---- events ---------------------------------------------------------

    fn event(&mut self, key: usize, generation: u32, side: usize, f: EventFlags) {
        let readable = f.contains(EventFlags::IN);
        let writable = f.intersects(EventFlags::OUT | EventFlags::HUP | EventFlags::ERR);
        let closed = f.intersects(EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR);
        let urgent = f.contains(EventFlags::PRI);
        let phase = match self.entries.get_mut(key) {
            // Stale: the entry this event was for has ended (see `data`).
            None => return,
            Some(Entry::Listener(l)) if l.generation != generation => return,
            Some(Entry::Conn(c)) if c.generation != generation => return,
            Some(Entry::UdpListener(l)) => {
                if l.generation == generation {
                    self.udp_listener_ready(key);
                }
                return;
            }
            Some(Entry::Flow(f)) => {
                if f.generation == generation {
                    self.flow_ready(key);
                }
                return;
            }
            // No socket yet: no event is for it.
            Some(Entry::FlowResolving(_)) => return,
            Some(Entry::Listener(_)) => {
                self.accept(key);
                return;
            }
            Some(Entry::Conn(c)) => {
                let end = if side == 0 {
                    Some(&mut c.client)
                } else {
                    c.backend.as_mut()
                };
                if let Some(end) = end {
                    end.saw(readable, writable, closed, urgent);
                }
                c.phase
            }
        };
        match phase {
            Phase::Relaying => self.drive(key),
            Phase::Connecting { .. } if side == 1 => self.connect_ended(key),
            _ => {}
        }
    }

    // ---- accepting ------------------------------------------------------

    /// Accept from every listener (accepting resumed below the cap).
    fn accept_everywhere(&mut self) {
        for k in self.keys(|e| matches!(e, Entry::Listener(_))) {
            self.accept(k);
        }
    }

    /// Accept until the backlog is empty, the cap is reached or accept fails.
    fn accept(&mut self, key: usize) {
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
                    if super::is_resource_error(&e) {
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
    fn admit(&mut self, peer: SocketAddr) -> bool {
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
    fn release(&mut self, peer: SocketAddr) {
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

    fn backing_off(&self) -> bool {
        self.backoff_until.is_some_and(|t| t > self.now)
    }

    /// Out of file descriptors or memory: stop accepting and making
    /// backend sockets for a while (doubling up to 1 s) instead of spinning
    /// on a listener that stays readable, and so that queued clients wait in
    /// the backlog to be served rather than be accepted only to be reset.
    fn back_off(&mut self, what: &str, e: &io::Error) {
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

    // ---- connecting -----------------------------------------------------

    fn start_conn(&mut self, client: TcpStream, peer: SocketAddr, mapping: Arc<Mapping>) {
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

    fn resolved(&mut self, key: usize, generation: u32, addrs: Result<Vec<SocketAddr>, String>) {
        let Some(Entry::Conn(c)) = self.entries.get_mut(key) else {
            return;
        };
        if c.generation != generation || !matches!(c.phase, Phase::Resolving { .. }) {
            return;
        }
        match addrs.and_then(usable_addresses) {
            Ok(usable) => {
                c.addrs = usable;
                self.connect_next(key);
            }
            Err(e) => self.refuse(key, e),
        }
    }

    /// Try the connection's next backend address.
    fn connect_next(&mut self, key: usize) {
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
                Err(Attempt::Socket(e)) if super::is_resource_error(&e) => {
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
    fn connect_failed(&mut self, key: usize, why: String) {
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
    fn connect_ended(&mut self, key: usize) {
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
    fn refuse(&mut self, key: usize, why: String) {
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

    fn established(&mut self, key: usize) {
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

    // ---- relaying -------------------------------------------------------

    /// Step both directions, then register each socket for what is waited
    /// on it.
    fn drive(&mut self, key: usize) {
        let Some(Entry::Conn(c)) = self.entries.get_mut(key) else {
            return;
        };
        let Some(backend) = c.backend.as_mut() else {
            return;
        };
        let mut ctx = Ctx {
            pool: &self.pool,
            stats: &self.stats,
            buf: &mut self.buf,
            moved: false,
        };
        let mut waits = [Wait::Done; 2];
        let mut ended = false;
        let mut failed = None;
        for (i, wait) in waits.iter_mut().enumerate() {
            let other_done = c.pumps[1 - i].done;
            let was_done = c.pumps[i].done;
            let (src, dst) = match i {
                0 => (&mut c.client, &mut *backend),
                _ => (&mut *backend, &mut c.client),
            };
            match c.pumps[i].step(src, dst, &mut ctx, other_done) {
                Ok(w) => {
                    *wait = w;
                    ended |= w == Wait::Done && !was_done;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if ctx.moved {
            c.last_active = self.now;
        }
        if let Some(e) = failed {
            self.finish(key, Outcome::Failed(e));
            return;
        }
        if waits == [Wait::Done; 2] {
            self.finish(key, Outcome::Closed);
            return;
        }
        // Client: read for ToBackend, write for ToClient; backend the
        // reverse. Reading is switched off only while its direction waits to
        // write (the bulk case, where every arriving segment would wake the
        // loop); a direction that is over leaves it on, since nothing but a
        // reset can come any more and switching it off would cost a syscall
        // at the end of every connection.
        let want = [
            flags(waits[0] != Wait::Write, waits[1] == Wait::Write),
            flags(waits[1] != Wait::Write, waits[0] == Wait::Write),
        ];
        let mut problem = None;
        for (side, want) in want.into_iter().enumerate() {
            if c.registered[side] == Some(want) {
                continue;
            }
            let sock = if side == 0 {
                c.client.sock.as_fd()
            } else {
                backend.sock.as_fd()
            };
            let d = data(key, c.generation, side);
            let r = match c.registered[side] {
                Some(_) => epoll::modify(&self.epoll, sock, d, want),
                None => epoll::add(&self.epoll, sock, d, want),
            };
            match r {
                Ok(()) => c.registered[side] = Some(want),
                Err(e) => problem = Some((side, e)),
            }
        }
        if let Some((side, e)) = problem {
            let side = if side == 0 {
                relay::Side::Client
            } else {
                relay::Side::Backend
            };
            let e = relay::RelayError {
                side,
                op: "wait for",
                source: e.into(),
            };
            self.finish(key, Outcome::Failed(e));
            return;
        }
        if ended && c.half_closed.is_none() {
            // Half-closed: the other direction goes on, for at most fin_timeout.
            c.half_closed = Some(self.now);
            let due = self.now + ms(self.settings.fin_timeout);
            self.arm(key, due);
        }
    }

    /// End a connection: count and log how, reset both sockets unless it
    /// closed cleanly, and close them (which also takes them out of epoll).
    fn finish(&mut self, key: usize, outcome: Outcome) {
        let Some(Entry::Conn(c)) = self.entries.get(key) else {
            return;
        };
        // A timeout closes a silent connection with FINs, as if both sides
        // had finished, only when that is true of every byte: bytes held
        // here, or received and not yet read, would be lost behind a FIN
        // that makes the stream look complete. Then both sides are reset.
        let cut = || {
            c.pumps.iter().any(Pump::holds_bytes)
                || relay::has_unread(&c.client.sock)
                || c.backend
                    .as_ref()
                    .is_some_and(|b| relay::has_unread(&b.sock))
        };
        let reset = match outcome {
            Outcome::Closed => {
                conn_log!(debug, c, "closed");
                false
            }
            Outcome::IdleTimeout => {
                inc(&self.stats.idle_timeouts);
                let cut = cut();
                conn_log!(
                    debug,
                    c,
                    "idle for {:?}: {}",
                    self.settings.idle_timeout,
                    if cut {
                        "bytes still in flight, resetting both sides"
                    } else {
                        "closed"
                    }
                );
                cut
            }
            Outcome::FinTimeout => {
                inc(&self.stats.fin_timeouts);
                let cut = cut();
                conn_log!(
                    debug,
                    c,
                    "half-closed and silent for {:?}: {}",
                    self.settings.fin_timeout,
                    if cut {
                        "bytes still in flight, resetting both sides"
                    } else {
                        "closed"
                    }
                );
                cut
            }
            Outcome::Failed(e) => {
                inc(&self.stats.resets);
                conn_log!(debug, c, "{e}: resetting both sides");
                true
            }
            Outcome::Shutdown => {
                inc(&self.stats.shutdown_resets);
                conn_log!(debug, c, "shutdown_timeout ran out: resetting both sides");
                true
            }
        };
        if reset {
            relay::arm_reset(&c.client.sock);
            if let Some(b) = &c.backend {
                relay::arm_reset(&b.sock);
            }
        }
        self.remove(key);
    }

    fn remove(&mut self, key: usize) {
        if let Some(Entry::Conn(c)) = self.entries.get(key) {
            let peer = c.peer;
            self.entries.remove(key);
            self.release(peer);
            self.active -= 1;
            self.stats.active.fetch_sub(1, Ordering::Relaxed);
            // An ended connection's timer stays queued until it is due
            // (idle_timeout away): drop such entries once they outnumber
            // the live ones, so the queue stays the size of what is live.
            if self.timers.len() > 2 * self.entries.len() + 64 {
                self.compact_timers();
            }
        }
    }

    // ---- timers ---------------------------------------------------------

    /// Keep only the timers that can still fire: each live connection's
    /// earliest, and the current back-off.
    fn compact_timers(&mut self) {
        let (entries, backoff) = (&self.entries, self.backoff_until);
        self.timers.retain(|&Reverse((due, key, generation))| {
            if key == BACKOFF {
                return backoff == Some(due);
            }
            match entries.get(key) {
                Some(Entry::Conn(c)) => c.generation == generation && c.timer_at == due,
                Some(Entry::Flow(f)) => f.generation == generation && f.timer_at == due,
                _ => false,
            }
        });
    }

    /// Make sure the connection's timer fires by `due`.
    fn arm(&mut self, key: usize, due: u64) {
        if let Some(Entry::Conn(c)) = self.entries.get_mut(key) {
            if due < c.timer_at {
                c.timer_at = due;
                self.timers.push(Reverse((due, key, c.generation)));
            }
        }
    }

    fn fire_timers(&mut self) {
        while let Some(&Reverse((due, key, generation))) = self.timers.peek() {
            if due > self.now {
                return;
            }
            self.timers.pop();
            if key == BACKOFF {
                if !self.backing_off() {
                    self.backoff_until = None;
                    self.accept_everywhere();
                }
                continue;
            }
            match self.entries.get_mut(key) {
                Some(Entry::Conn(c)) if c.generation == generation && c.timer_at == due => {
                    c.timer_at = u64::MAX;
                    self.conn_timer(key);
                }
                Some(Entry::Flow(f)) if f.generation == generation && f.timer_at == due => {
                    f.timer_at = u64::MAX;
                    self.flow_timer(key);
                }
                Some(Entry::FlowResolving(r))
                    if r.generation == generation && r.timer_at == due =>
                {
                    self.flow_unresolved(key, "no answer from the resolver within connect_timeout");
                }
                // Stale: the slot was reused, or an earlier timer replaced it.
                _ => {}
            }
        }
    }

    fn conn_timer(&mut self, key: usize) {
        let Some(Entry::Conn(c)) = self.entries.get_mut(key) else {
            return;
        };
        let now = self.now;
        let s = &self.settings;
        match c.phase {
            Phase::Resolving { since } => {
                if now >= since + ms(s.connect_timeout) {
                    let why = format!(
                        "name resolution: no answer within connect_timeout {:?}",
                        s.connect_timeout
                    );
                    self.refuse(key, why);
                } else {
                    let due = since + ms(s.connect_timeout);
                    self.arm(key, due);
                }
            }
            Phase::Starved => self.connect_next(key),
            Phase::Connecting { since } => {
                if now >= since + ms(s.connect_timeout) {
                    let why = match c.addrs.first() {
                        Some(a) => format!(
                            "{a}: no answer within connect_timeout {:?}",
                            s.connect_timeout
                        ),
                        None => format!("no answer within connect_timeout {:?}", s.connect_timeout),
                    };
                    self.connect_failed(key, why);
                    self.connect_next(key);
                } else {
                    let due = since + ms(s.connect_timeout);
                    self.arm(key, due);
                }
            }
            Phase::Relaying => {
                // fin_timeout bounds a half-closed connection that has gone
                // silent, not one still moving bytes the other way: it
                // counts from the half-close or the last byte, whichever
                // came later.
                let fin_due = c
                    .half_closed
                    .map(|t| t.max(c.last_active) + ms(s.fin_timeout));
                if fin_due.is_some_and(|due| now >= due) {
                    self.finish(key, Outcome::FinTimeout);
                    return;
                }
                let idle_due = c.last_active + ms(s.idle_timeout);
                if now >= idle_due {
                    self.finish(key, Outcome::IdleTimeout);
                    return;
                }
                self.arm(key, fin_due.map_or(idle_due, |f| f.min(idle_due)));
            }
        }
    }
}

/// The address a client is counted under for max_connections_per_client:
/// an IPv4 address as it is (also when it came v4-mapped on a dual-stack
/// socket), an IPv6 address by its /64, the block one subscriber's LAN
/// usually gets (a single host can pick any address in it).
/// The addresses a backend name resolved to that can be backends, in the
/// resolver's order, or why there is none. Checked as a literal target is
/// (mapping.rs): a name that resolves to the broadcast, unspecified or a
/// multicast address is not a backend.
fn usable_addresses(addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
    if addrs.is_empty() {
        return Err("the name resolved to no address".to_owned());
    }
    let (usable, unusable): (Vec<_>, Vec<_>) = addrs
        .into_iter()
        .partition(|addr| crate::mapping::unusable_target(addr.ip()).is_none());
    if !usable.is_empty() {
        return Ok(usable);
    }
    let why = unusable
        .iter()
        .map(|addr| {
            let what = crate::mapping::unusable_target(addr.ip()).unwrap_or("");
            format!("{}: {what}, not a backend", addr.ip())
        })
        .collect::<Vec<_>>()
        .join("; ");
    Err(format!("the name resolved only to {why}"))
}

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

    use crate::mapping::{Protocol, Target};
    use std::io::{Read, Write};
    use std::num::NonZeroU16;

    /// Thousands of short connections through the loop, driven here turn
    /// by turn: each was relayed byte for byte, and the timer queue holds
    /// no more than the live connections need (each ended connection's
    /// idle timer would otherwise stay queued for idle_timeout).
    #[test]
    fn ended_connections_leave_no_timers_behind() {
        const N: usize = 2000;
        let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let backend_port = backend.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for s in backend.incoming() {
                let Ok(mut s) = s else { return };
                let mut got = Vec::new();
                if s.read_to_end(&mut got).is_ok() {
                    let _ = s.write_all(&got);
                }
            }
        });
        let front = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let front_addr = front.local_addr().expect("addr");
        let port = |p: u16| NonZeroU16::new(p).expect("port");
        let mapping = Arc::new(Mapping {
            index: 0,
            name: None,
            listen: Listen {
                addr: None,
                port: port(front_addr.port()),
            },
            target: Target {
                host: TargetHost::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port: port(backend_port),
            },
            protocol: Protocol::Tcp,
            proxy_protocol: ProxyProtocol::Off,
        });
        let (resolver, _) = tokio::sync::mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let mut engine = Engine::new(
            Arc::new(ProxySettings::default()),
            Arc::clone(&stats),
            PipePool::new(4096),
            resolver,
        )
        .expect("engine");
        engine
            .add_listener(mapping.listen, mapping, front)
            .expect("listener");
        let clients = std::thread::spawn(move || {
            for i in 0..N {
                let mut c = TcpStream::connect(front_addr).expect("connect");
                let msg = format!("message {i}");
                c.write_all(msg.as_bytes()).expect("write");
                c.shutdown(std::net::Shutdown::Write).expect("shutdown");
                let mut back = String::new();
                c.read_to_string(&mut back).expect("read");
                assert_eq!(back, msg);
            }
        });
        let mut events = Vec::with_capacity(EVENTS);
        let mut peak = 0;
        while !clients.is_finished() || engine.active > 0 {
            engine.turn(&mut events, Some(10)).expect("turn");
            peak = peak.max(engine.timers.len());
        }
        clients.join().expect("clients");
        assert_eq!(stats.accepted.load(Ordering::Relaxed), N as u64);
        assert!(peak <= 2 * 2 + 64 + 1, "the timer queue grew to {peak}");
    }

    /// Timeouts far beyond what the timers count (here Duration::MAX; the
    /// configuration refuses them, a reload of settings made in code does
    /// not) mean "never": `now + timeout` once wrapped to the past and every
    /// connection was closed at once as idle, or half-closed ones as soon as
    /// their first FIN passed.
    #[test]
    fn timeouts_beyond_the_timers_never_fire() {
        let backend = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let backend_port = backend.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for s in backend.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    // Echo; after the client's FIN, stay half-open (the
                    // connection lives on for fin_timeout).
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            std::thread::sleep(Duration::from_secs(60));
                        }
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let front = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let front_addr = front.local_addr().expect("addr");
        let mapping = Arc::new(Mapping {
            index: 0,
            name: None,
            listen: Listen {
                addr: None,
                port: NonZeroU16::new(front_addr.port()).expect("port"),
            },
            target: Target {
                host: TargetHost::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                port: NonZeroU16::new(backend_port).expect("port"),
            },
            protocol: Protocol::Tcp,
            proxy_protocol: ProxyProtocol::Off,
        });
        let settings = ProxySettings {
            connect_timeout: Duration::MAX,
            idle_timeout: Duration::MAX,
            fin_timeout: Duration::MAX,
            ..ProxySettings::default()
        };
        let (resolver, _) = tokio::sync::mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let mut engine = Engine::new(
            Arc::new(settings),
            Arc::clone(&stats),
            PipePool::new(4096),
            resolver,
        )
        .expect("engine");
        // Later than the start, as in a proxy that has run for a while.
        engine.start -= Duration::from_secs(3600);
        engine
            .add_listener(mapping.listen, mapping, front)
            .expect("listener");
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(front_addr).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut buf = [0u8; 5];
            for msg in [b"first", b"again"] {
                c.write_all(msg).expect("write");
                c.read_exact(&mut buf).expect("echo");
                assert_eq!(&buf, msg);
            }
            c.shutdown(std::net::Shutdown::Write).expect("shutdown");
            c
        });
        let mut events = Vec::with_capacity(EVENTS);
        while !client.is_finished() {
            engine.turn(&mut events, Some(10)).expect("turn");
        }
        let _c = client.join().expect("client");
        for _ in 0..20 {
            engine.turn(&mut events, Some(10)).expect("turn");
        }
        assert_eq!(engine.active, 1, "the connection was closed");
        assert_eq!(stats.idle_timeouts.load(Ordering::Relaxed), 0);
        assert_eq!(stats.fin_timeouts.load(Ordering::Relaxed), 0);
    }

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

    /// An idle connection's memory in the proxy is this, boxed (it was
    /// about 1.5 KiB as a tokio task with two registered sockets).
    #[test]
    fn a_connection_stays_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 320, "Conn is {size} bytes");
    }
}

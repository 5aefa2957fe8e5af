//! The proxy's data plane: one thread, one epoll instance, every listening
//! socket and every connection. It accepts, connects to the backend, relays
//! ([`super::relay`]) and keeps each connection's timeouts; the control
//! plane (signals, reloads, name resolution, shutdown; tokio, in
//! [`super`]) talks to it through [`EngineHandle`].
//!
//! Why not a tokio task per connection, as before: measured against its
//! peers (benches/peers/), tokio's fixed costs were what set lowport
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
//!
//! Who owns what: this file the loop, its commands and events, and the
//! timer queue; [`tcp`] accepting and connecting, [`conn`] a connection's
//! relaying, end and timeouts, [`resolve`] backend names, [`udp`] datagram
//! flows.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rustix::event::epoll::{self, EventData, EventFlags};
use slab::Slab;
use tracing::warn;

use super::pipe::PipePool;
use super::relay::{Outcome, COPY_CHUNK};
use super::stats::Stats;
use crate::config::ProxySettings;
use crate::mapping::{Listen, Mapping};

/// A log event about one connection, naming its client and mapping. Fields
/// are evaluated only when the level is enabled.
macro_rules! conn_log {
    ($level:ident, $conn:expr, $($arg:tt)+) => {
        tracing::$level!(client = %unmap($conn.peer), mapping = %$conn.mapping.label(), $($arg)+)
    };
}

mod conn;
mod resolve;
mod tcp;
mod udp;

use conn::{Conn, Phase};
use resolve::usable_addresses;
use tcp::Listener;

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

    /// Keep only the timers that can still fire: each live connection's
    /// and flow's earliest, and the current back-off.
    fn compact_timers(&mut self) {
        let (entries, backoff) = (&self.entries, self.backoff_until);
        self.timers.retain(|&Reverse((due, key, generation))| {
            if key == BACKOFF {
                return backoff == Some(due);
            }
            match entries.get(key) {
                Some(Entry::Conn(c)) => c.generation == generation && c.timer_at == due,
                Some(Entry::Flow(f)) => f.generation == generation && f.timer_at == due,
                Some(Entry::FlowResolving(r)) => r.generation == generation && r.timer_at == due,
                _ => false,
            }
        });
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
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::mapping::{Protocol, ProxyProtocol, Target, TargetHost};
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpStream};
    use std::num::NonZeroU16;
    use std::sync::atomic::Ordering;

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
}

//! UDP flows on the event loop: a listening socket per listen spec, and
//! per client address a flow, a socket connected to the backend.
//!
//! The first datagram from a client address opens its flow. The flow's
//! socket is made here, on the event loop, so after privileges were
//! dropped, and the kernel gives it an ephemeral port. Datagrams from the
//! client go out on it; what comes back on it goes to the client from the
//! listening socket, with the source address the client sent to (IP_PKTINFO
//! / IPV6_PKTINFO: a client with a connected socket on a host with several
//! addresses accepts nothing else). A flow ends when no datagram went
//! either way for `udp_idle_timeout`, when its listener closes (reload,
//! shutdown), and never on an ICMP error: a backend that restarts answers
//! "port unreachable" for a moment, and the flow goes on after it.
//!
//! Datagrams travel whole by construction: every receive slot holds 64 KiB,
//! more than any UDP payload (65,507 bytes over IPv4, 65,527 over IPv6) and
//! than any batch that GRO coalesces (the kernel flushes one below 64 KiB);
//! a read that filled its slot anyway is dropped and counted
//! (`udp_dropped_truncated`), never relayed.
//! Nothing is queued: a datagram the kernel will not take now (send buffer
//! full) is dropped and counted, as a router would, so an idle flow holds no
//! buffer — a socket, its state and this table's entry.
//!
//! Syscalls come in batches through `quinn-udp`, the datapath of the
//! `quinn` QUIC stack: recvmmsg of up to 32 reads, each of which may be a
//! GRO batch of one sender's datagrams; such a batch leaves as one GSO send
//! (UDP_SEGMENT) of the same segments, so the far end receives exactly the
//! datagrams that were sent, never more. A socket whose kernel or device
//! refuses GSO (EIO, EINVAL) falls back to single datagrams for good; a
//! batch refused for the MTU on the way out (EMSGSIZE) goes one datagram at
//! a time. The sending and receiving itself is in [`datagram`].
//!
//! A flow to a host name opens resolving, without a socket: the control
//! plane looks the name up, as for a TCP connection, and its first
//! datagrams (a few) wait for the answer.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use quinn_udp::{EcnCodepoint, RecvMeta, UdpSocketState, BATCH_SIZE};
use rustix::event::epoll::{self, EventFlags};
use tracing::{debug, info, warn};

use super::{data, ms, usable_addresses, Engine, Entry, Resolve};
use crate::mapping::{Listen, Mapping, TargetHost};
use crate::proxy::proxy_protocol::unmap;
use crate::proxy::stats::{add, inc};
use datagram::{
    cut, datagrams, flow_socket, gather, is_icmp_error, receive_buffer, relay_options, run_end,
    send, slices, MAX_RUN, SLOT,
};

mod datagram;

/// A UDP listening socket and the flows of its clients.
pub(super) struct UdpListener {
    sock: UdpSocket,
    state: UdpSocketState,
    pub(super) generation: u32,
    pub(super) key: Listen,
    pub(super) mapping: Arc<Mapping>,
    /// Bound to a wildcard address: replies name the address the client
    /// sent to (a specific address is the only source the kernel picks).
    wildcard: bool,
    /// Client address → the flow's slab key.
    flows: HashMap<SocketAddr, usize>,
}

/// One client address's flow.
pub(super) struct Flow {
    sock: UdpSocket,
    state: UdpSocketState,
    pub(super) generation: u32,
    /// The listener's slab key and generation.
    listener: (usize, u32),
    client: SocketAddr,
    target: SocketAddr,
    /// The address the client last sent to (wildcard listeners only).
    local: Option<IpAddr>,
    /// ms since the loop started: a datagram last went either way; the
    /// timer queued for the flow (re-queued only when it fires early).
    last_active: u64,
    pub(super) timer_at: u64,
}

/// A new flow whose backend is a host name, while the control plane
/// resolves it (as for a TCP connection: once per flow, so a name that
/// moves is followed by new flows): no socket yet, and the client's first
/// datagrams held, a few, to go out once it has one.
pub(super) struct Resolving {
    pub(super) generation: u32,
    listener: (usize, u32),
    client: SocketAddr,
    local: Option<IpAddr>,
    held: Vec<(Vec<u8>, Option<EcnCodepoint>)>,
    held_bytes: usize,
    pub(super) timer_at: u64,
}

/// What a resolving flow holds at most: enough for a QUIC handshake's
/// first flight (a few 1,200-byte datagrams) or one datagram of any size.
const HELD_DATAGRAMS: usize = 16;
const HELD_BYTES: usize = 1 << 17;

impl Resolving {
    /// Hold the datagrams of one read; how many found no room.
    fn hold(&mut self, m: &RecvMeta, contents: &[u8]) -> u64 {
        let stride = if m.stride == 0 {
            contents.len().max(1)
        } else {
            m.stride
        };
        let mut refused = 0;
        let mut push = |d: &[u8]| {
            if self.held.len() < HELD_DATAGRAMS && self.held_bytes + d.len() <= HELD_BYTES {
                self.held_bytes += d.len();
                self.held.push((d.to_vec(), m.ecn));
            } else {
                refused += 1;
            }
        };
        if contents.is_empty() {
            push(&[]);
        } else {
            contents.chunks(stride).for_each(push);
        }
        refused
    }
}

/// The engine's UDP state: one set of receive slots for every socket.
pub(super) struct Udp {
    slots: Box<[u8]>,
    /// A run of datagrams gathered into one GSO send.
    run: Vec<u8>,
    flows: usize,
    /// A flow's socket could not be made, and that was logged: said once
    /// until a flow opens again (a flood would log every datagram).
    starved: bool,
    /// The udp_receive_buffer the kernel capped, said once per value.
    capped_said: usize,
}

impl Udp {
    pub(super) fn new() -> Udp {
        Udp {
            slots: vec![0u8; SLOT * BATCH_SIZE].into_boxed_slice(),
            run: Vec::with_capacity(MAX_RUN),
            flows: 0,
            starved: false,
            capped_said: 0,
        }
    }
}

impl Engine {
    /// Serve a UDP listening socket for `mapping`.
    pub(super) fn add_udp_listener(
        &mut self,
        key: Listen,
        mapping: Arc<Mapping>,
        sock: UdpSocket,
    ) -> io::Result<()> {
        let local = sock.local_addr()?;
        let state = UdpSocketState::new((&sock).into())?;
        relay_options(&sock, local.is_ipv6());
        let wildcard = local.ip().is_unspecified();
        self.receive_buffer(&sock, local);
        let k = self.add_listening(sock, |sock, generation| {
            Entry::UdpListener(Box::new(UdpListener {
                sock,
                state,
                generation,
                key,
                mapping,
                wildcard,
                flows: HashMap::new(),
            }))
        })?;
        // Datagrams may already wait.
        self.udp_listener_ready(k);
        Ok(())
    }

    /// New flows on `key` go to this mapping (reload); live ones keep theirs.
    pub(super) fn udp_remap(&mut self, key: Listen, mapping: &Arc<Mapping>) {
        for (_, e) in &mut self.entries {
            if let Entry::UdpListener(l) = e {
                if l.key == key {
                    l.mapping = Arc::clone(mapping);
                }
            }
        }
    }

    /// Close the UDP listeners `which` picks and their flows: a flow
    /// answers from its listener's socket, so none outlives it.
    pub(super) fn udp_unlisten(&mut self, which: impl Fn(&UdpListener) -> bool) {
        for k in self.keys(|e| matches!(e, Entry::UdpListener(l) if which(l))) {
            if let Some(Entry::UdpListener(l)) = self.entries.try_remove(k) {
                for flow in l.flows.into_values() {
                    if let Some(Entry::Flow(_) | Entry::FlowResolving(_)) = self.entries.get(flow) {
                        self.entries.remove(flow);
                        self.flow_gone();
                    }
                }
            }
        }
    }

    fn flow_gone(&mut self) {
        self.udp.flows -= 1;
        self.stats.udp.flows_active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Give a UDP listener the receive buffer proxy.udp_receive_buffer asks
    /// for; say once per value when the kernel's rmem_max caps it, and how
    /// to raise that (an unprivileged process cannot go past it).
    fn receive_buffer(&mut self, sock: &UdpSocket, local: SocketAddr) {
        let want = self.settings.udp_receive_buffer;
        match receive_buffer(sock, want) {
            Ok(None) => {}
            Ok(Some(took)) => {
                if std::mem::replace(&mut self.udp.capped_said, want) != want {
                    let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
                        .map(|s| s.trim().to_owned())
                        .unwrap_or_else(|_| "?".to_owned());
                    info!(
                        "UDP {local}: receive buffer {took} bytes, less than proxy.udp_receive_buffer \
                         {want}: the kernel caps it at net.core.rmem_max ({max}); a burst larger than \
                         the buffer is dropped. Raise the cap, e.g. `sysctl -w net.core.rmem_max={want}` \
                         (and a file in /etc/sysctl.d/ to keep it), then reload"
                    );
                }
            }
            Err(e) => warn!("UDP {local}: cannot set the receive buffer: {e}"),
        }
    }

    /// Re-check every flow's expiry, and every listener's receive buffer,
    /// against new settings.
    pub(super) fn udp_settings_changed(&mut self) {
        let listeners: Vec<(UdpSocket, SocketAddr)> = self
            .entries
            .iter()
            .filter_map(|(_, e)| match e {
                Entry::UdpListener(l) => {
                    let sock = l.sock.try_clone().ok()?;
                    let local = sock.local_addr().ok()?;
                    Some((sock, local))
                }
                _ => None,
            })
            .collect();
        for (sock, local) in listeners {
            self.receive_buffer(&sock, local);
        }
        for k in self.keys(|e| matches!(e, Entry::Flow(_))) {
            self.flow_timer(k);
        }
    }

    /// Read the listener's datagrams until none is left (edge-triggered),
    /// and send each on its client's flow.
    pub(super) fn udp_listener_ready(&mut self, key: usize) {
        let mut slots = std::mem::take(&mut self.udp.slots);
        let mut run = std::mem::take(&mut self.udp.run);
        let mut meta = [RecvMeta::default(); BATCH_SIZE];
        while let Some(Entry::UdpListener(l)) = self.entries.get(key) {
            let n = match l
                .state
                .recv((&l.sock).into(), &mut slices(&mut slots), &mut meta)
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Nothing a listening socket reports should repeat, but
                    // an error must not make the loop spin.
                    debug!(listen = %l.key, "UDP receive: {e}");
                    break;
                }
            };
            let mut i = 0;
            while i < n {
                if cut(&meta[i]) {
                    inc(&self.stats.udp.dropped_truncated);
                    i += 1;
                    continue;
                }
                let end = run_end(&meta[..n], i);
                let (m, contents) = gather(&meta, &slots, &mut run, i, end);
                self.client_datagrams(key, &m, contents);
                i = end;
            }
        }
        self.udp.slots = slots;
        self.udp.run = run;
    }

    /// One read from a client (one datagram, or a GRO batch of them).
    fn client_datagrams(&mut self, key: usize, m: &RecvMeta, contents: &[u8]) {
        let Some(Entry::UdpListener(l)) = self.entries.get(key) else {
            return;
        };
        let local = if l.wildcard { m.dst_ip } else { None };
        let flow = match l.flows.get(&m.addr) {
            Some(&f) => f,
            None => match self.open_flow(key, m.addr) {
                Some(f) => f,
                None => return,
            },
        };
        let f = match self.entries.get_mut(flow) {
            Some(Entry::Flow(f)) => f,
            Some(Entry::FlowResolving(r)) => {
                if local.is_some() {
                    r.local = local;
                }
                let refused = r.hold(m, contents);
                add(&self.stats.udp.dropped_unresolved, refused);
                return;
            }
            _ => return,
        };
        let (dropped, icmp) = send(
            &f.state,
            &f.sock,
            f.target,
            None,
            m,
            contents,
            &self.stats.udp.gso_fallbacks,
        );
        let n = datagrams(m);
        let s = &self.stats.udp;
        add(&s.datagrams_to_backend, n - dropped.min(n));
        add(&s.bytes_to_backend, contents.len() as u64);
        add(&s.dropped_send, dropped);
        add(&s.icmp_errors, icmp);
        if let Some(Entry::Flow(f)) = self.entries.get_mut(flow) {
            f.last_active = self.now;
            if local.is_some() {
                f.local = local;
            }
        }
    }

    /// Open a flow for `client` on listener `key`: None (the datagram is
    /// dropped and counted) at udp_max_flows or without a socket. A flow to
    /// a host name opens resolving, without a socket yet.
    fn open_flow(&mut self, key: usize, client: SocketAddr) -> Option<usize> {
        if self.udp.flows >= self.settings.udp_max_flows.get() {
            inc(&self.stats.udp.dropped_max_flows);
            debug!(client = %unmap(client), "udp_max_flows reached: datagram dropped");
            return None;
        }
        let Some(Entry::UdpListener(l)) = self.entries.get(key) else {
            return None;
        };
        let listener = (key, l.generation);
        let flow_key = if let TargetHost::Name(name) = &l.mapping.target.host {
            let (name, port) = (name.clone(), l.mapping.target.port.get());
            self.open_resolving(listener, client, name, port)?
        } else {
            let target = udp_target(&l.mapping, client);
            let sock = self.flow_socket_or_count(client, target, 1)?;
            let generation = self.generation();
            let flow_key = self.entries.vacant_key();
            let due = self.now + ms(self.settings.udp_idle_timeout);
            self.install_flow(
                flow_key, generation, listener, client, None, target, sock, due,
            )?
        };
        if let Some(Entry::UdpListener(l)) = self.entries.get_mut(key) {
            l.flows.insert(client, flow_key);
        }
        self.udp.flows += 1;
        self.udp.starved = false;
        inc(&self.stats.udp.flows_opened);
        self.stats.udp.flows_active.fetch_add(1, Ordering::Relaxed);
        Some(flow_key)
    }

    /// A flow's socket to `target`, or None with the error logged and the
    /// `datagrams` that were to go on it counted.
    fn flow_socket_or_count(
        &mut self,
        client: SocketAddr,
        target: SocketAddr,
        datagrams: u64,
    ) -> Option<(UdpSocket, UdpSocketState)> {
        match flow_socket(target) {
            Ok(s) => Some(s),
            Err((sock, e)) => {
                add(&self.stats.udp.dropped_no_socket, datagrams);
                if sock && !std::mem::replace(&mut self.udp.starved, true) {
                    warn!(client = %unmap(client), "no UDP socket for a new flow: {e}; datagrams from new clients are dropped (and counted) until one can be made");
                } else {
                    debug!(client = %unmap(client), "UDP flow to {target}: {e}; datagram dropped");
                }
                None
            }
        }
    }

    /// Watch a flow's socket and store the flow at `flow_key` (a vacant
    /// key, or the key its resolving entry held), its timer due at `due`.
    #[allow(clippy::too_many_arguments)]
    fn install_flow(
        &mut self,
        flow_key: usize,
        generation: u32,
        listener: (usize, u32),
        client: SocketAddr,
        local: Option<IpAddr>,
        target: SocketAddr,
        sock: (UdpSocket, UdpSocketState),
        due: u64,
    ) -> Option<usize> {
        if let Err(e) = epoll::add(
            &self.epoll,
            &sock.0,
            data(flow_key, generation, 1),
            EventFlags::IN | EventFlags::ET,
        ) {
            inc(&self.stats.udp.dropped_no_socket);
            warn!(client = %unmap(client), "cannot watch a new UDP flow's socket: {e}");
            return None;
        }
        let flow = Entry::Flow(Box::new(Flow {
            sock: sock.0,
            state: sock.1,
            generation,
            listener,
            client,
            target,
            local,
            last_active: self.now,
            timer_at: due,
        }));
        match self.entries.get_mut(flow_key) {
            Some(e) => *e = flow,
            None => {
                let k = self.entries.insert(flow);
                debug_assert_eq!(k, flow_key);
            }
        }
        self.timers
            .push(std::cmp::Reverse((due, flow_key, generation)));
        debug!(client = %unmap(client), "UDP flow opened to {target}");
        Some(flow_key)
    }

    /// A flow to a host name: ask the control plane for its addresses, and
    /// hold the client's datagrams until they come.
    fn open_resolving(
        &mut self,
        listener: (usize, u32),
        client: SocketAddr,
        name: String,
        port: u16,
    ) -> Option<usize> {
        let generation = self.generation();
        // As for a TCP connection: no longer than a backend that does not
        // answer would be waited for.
        let due = self.now + ms(self.settings.connect_timeout);
        let key = self
            .entries
            .insert(Entry::FlowResolving(Box::new(Resolving {
                generation,
                listener,
                client,
                local: None,
                held: Vec::new(),
                held_bytes: 0,
                timer_at: due,
            })));
        let asked = self.resolver.send(Resolve {
            conn: key,
            generation,
            name,
            port,
        });
        if asked.is_err() {
            self.entries.remove(key);
            inc(&self.stats.udp.dropped_unresolved);
            warn!(client = %unmap(client), "no backend for a UDP flow: name resolution is not available");
            return None;
        }
        self.timers.push(std::cmp::Reverse((due, key, generation)));
        Some(key)
    }

    /// The answer for a resolving flow: connect it to the first usable
    /// address (a connected UDP socket learns nothing of the backend, so
    /// there is no next address to fall back to) and send what it held.
    pub(super) fn flow_resolved(
        &mut self,
        key: usize,
        generation: u32,
        addrs: Result<Vec<SocketAddr>, String>,
    ) {
        let Some(Entry::FlowResolving(r)) = self.entries.get(key) else {
            return;
        };
        if r.generation != generation {
            return;
        }
        let target = match addrs.and_then(usable_addresses) {
            Ok(a) => a[0],
            Err(why) => return self.flow_unresolved(key, &why),
        };
        let (listener, client, local, due) = (r.listener, r.client, r.local, r.timer_at);
        let held = r.held.len() as u64;
        let Some(sock) = self.flow_socket_or_count(client, target, held) else {
            return self.resolving_gone(key);
        };
        let Some(Entry::FlowResolving(r)) = self.entries.get_mut(key) else {
            return;
        };
        let held = std::mem::take(&mut r.held);
        // The resolving entry's timer (connect_timeout) becomes the flow's
        // first: it fires, finds the flow active, and queues the next.
        if self
            .install_flow(key, generation, listener, client, local, target, sock, due)
            .is_none()
        {
            return self.resolving_gone(key);
        }
        let Some(Entry::Flow(f)) = self.entries.get(key) else {
            return;
        };
        let s = &self.stats.udp;
        for (d, ecn) in held {
            let mut m = RecvMeta::default();
            (m.addr, m.len, m.stride, m.ecn) = (client, d.len(), d.len(), ecn);
            let (dropped, icmp) = send(&f.state, &f.sock, target, None, &m, &d, &s.gso_fallbacks);
            add(&s.datagrams_to_backend, 1 - dropped.min(1));
            add(&s.bytes_to_backend, d.len() as u64);
            add(&s.dropped_send, dropped);
            add(&s.icmp_errors, icmp);
        }
    }

    /// A resolving flow's name gave no usable address (or no answer came):
    /// its datagrams are dropped and counted, and the flow ends; the
    /// client's next datagram tries again.
    pub(super) fn flow_unresolved(&mut self, key: usize, why: &str) {
        let Some(Entry::FlowResolving(r)) = self.entries.get(key) else {
            return;
        };
        let mapping = match self.entries.get(r.listener.0) {
            Some(Entry::UdpListener(l)) => l.mapping.label(),
            _ => String::new(),
        };
        let client = r.client;
        // Counted before it is logged: the log is what a reader waits for.
        add(&self.stats.udp.dropped_unresolved, r.held.len() as u64);
        self.resolving_gone(key);
        warn!(client = %unmap(client), mapping = %mapping, "no backend for a UDP flow: {why}; its datagrams are dropped");
    }

    /// Remove a resolving flow that will not open.
    fn resolving_gone(&mut self, key: usize) {
        let Some(Entry::FlowResolving(r)) = self.entries.try_remove(key) else {
            return;
        };
        self.flow_gone();
        if let Some(Entry::UdpListener(l)) = self.entries.get_mut(r.listener.0) {
            if l.generation == r.listener.1 && l.flows.get(&r.client) == Some(&key) {
                l.flows.remove(&r.client);
            }
        }
    }

    /// Read what the backend sent on a flow until none is left, and send
    /// it to the client from the listening socket.
    pub(super) fn flow_ready(&mut self, key: usize) {
        let mut slots = std::mem::take(&mut self.udp.slots);
        let mut run = std::mem::take(&mut self.udp.run);
        let mut meta = [RecvMeta::default(); BATCH_SIZE];
        let mut moved = false;
        while let Some(Entry::Flow(f)) = self.entries.get(key) {
            let n = match f
                .state
                .recv((&f.sock).into(), &mut slices(&mut slots), &mut meta)
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Reported once, then cleared: read on.
                Err(e) if is_icmp_error(&e) => {
                    inc(&self.stats.udp.icmp_errors);
                    continue;
                }
                Err(e) => {
                    debug!(client = %unmap(f.client), "UDP receive from {}: {e}", f.target);
                    break;
                }
            };
            let Some(Entry::UdpListener(l)) = self.entries.get(f.listener.0) else {
                break;
            };
            if l.generation != f.listener.1 {
                break;
            }
            let s = &self.stats.udp;
            let mut i = 0;
            while i < n {
                if cut(&meta[i]) {
                    inc(&s.dropped_truncated);
                    i += 1;
                    continue;
                }
                let end = run_end(&meta[..n], i);
                let (m, contents) = gather(&meta, &slots, &mut run, i, end);
                let (dropped, _) = send(
                    &l.state,
                    &l.sock,
                    f.client,
                    f.local,
                    &m,
                    contents,
                    &s.gso_fallbacks,
                );
                let count = datagrams(&m);
                add(&s.datagrams_to_client, count - dropped.min(count));
                add(&s.bytes_to_client, contents.len() as u64);
                add(&s.dropped_send, dropped);
                moved = true;
                i = end;
            }
        }
        self.udp.slots = slots;
        self.udp.run = run;
        if moved {
            if let Some(Entry::Flow(f)) = self.entries.get_mut(key) {
                f.last_active = self.now;
            }
        }
    }

    /// A flow's timer: expire it, or queue the timer again for when it
    /// would expire now.
    pub(super) fn flow_timer(&mut self, key: usize) {
        let Some(Entry::Flow(f)) = self.entries.get_mut(key) else {
            return;
        };
        let due = f.last_active + ms(self.settings.udp_idle_timeout);
        if self.now < due {
            if due < f.timer_at {
                f.timer_at = due;
                self.timers
                    .push(std::cmp::Reverse((due, key, f.generation)));
            }
            return;
        }
        let (listener, client) = (f.listener, f.client);
        debug!(client = %unmap(client), "UDP flow idle for {:?}: closed", self.settings.udp_idle_timeout);
        self.entries.remove(key);
        self.flow_gone();
        inc(&self.stats.udp.flows_expired);
        if let Some(Entry::UdpListener(l)) = self.entries.get_mut(listener.0) {
            if l.generation == listener.1 && l.flows.get(&client) == Some(&key) {
                l.flows.remove(&client);
            }
        }
    }
}

/// Where a new flow goes: "this machine" is loopback in the family the
/// client came in (connecting a UDP socket sends nothing, so there is no
/// second family to fall back to).
fn udp_target(mapping: &Mapping, client: SocketAddr) -> SocketAddr {
    let port = mapping.target.port.get();
    match &mapping.target.host {
        TargetHost::Ip(ip) => SocketAddr::new(*ip, port),
        // A name is resolved first (`open_resolving`); loopback keeps
        // this total.
        TargetHost::Local | TargetHost::Name(_) => {
            if unmap(client).is_ipv6() {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)
            } else {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxySettings;
    use crate::mapping::{Protocol, ProxyProtocol, Target};
    use crate::proxy::pipe::PipePool;
    use crate::proxy::stats::Stats;
    use std::num::NonZeroU16;
    use std::time::Duration;

    /// A flow to a name whose lookup never answers ends at connect_timeout,
    /// also when the timer queue was compacted while it waited (compaction
    /// keeps only the timers that can still fire: its timer is one).
    #[test]
    fn a_flow_whose_name_gets_no_answer_ends_at_connect_timeout() {
        let front = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let front_addr = front.local_addr().expect("addr");
        let mapping = Arc::new(Mapping {
            index: 0,
            name: None,
            listen: Listen {
                addr: None,
                port: NonZeroU16::new(front_addr.port()).expect("port"),
            },
            target: Target {
                host: TargetHost::Name("hangs.lowport.test".to_owned()),
                port: NonZeroU16::new(8443).expect("port"),
            },
            protocol: Protocol::Udp,
            proxy_protocol: ProxyProtocol::Off,
        });
        let settings = ProxySettings {
            connect_timeout: Duration::from_millis(200),
            ..ProxySettings::default()
        };
        // The resolver: asked, never answers.
        let (resolver, mut asked) = tokio::sync::mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let mut engine = Engine::new(
            Arc::new(settings),
            Arc::clone(&stats),
            PipePool::new(4096),
            resolver,
        )
        .expect("engine");
        engine
            .add_udp_listener(mapping.listen, mapping, front)
            .expect("listener");
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client.send_to(b"hello", front_addr).expect("send");
        let mut events = Vec::with_capacity(16);
        let resolving = |e: &Engine| {
            e.entries
                .iter()
                .any(|(_, e)| matches!(e, Entry::FlowResolving(_)))
        };
        for _ in 0..50 {
            engine.turn(&mut events, Some(10)).expect("turn");
            if resolving(&engine) {
                break;
            }
        }
        assert!(resolving(&engine), "no flow waits for the name");
        assert!(asked.try_recv().is_ok(), "the resolver was not asked");
        engine.compact_timers();
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while resolving(&engine) && std::time::Instant::now() < until {
            engine.turn(&mut events, Some(50)).expect("turn");
        }
        assert!(!resolving(&engine), "still resolving after connect_timeout");
        assert_eq!(stats.udp.dropped_unresolved.load(Ordering::Relaxed), 1);
        assert_eq!(stats.udp.flows_active.load(Ordering::Relaxed), 0);
    }

    /// An idle flow is a socket, this entry and its slot in the listener's
    /// table: no buffer. The size is what a boxed entry costs on the heap.
    #[test]
    fn an_idle_flow_stays_small() {
        let size = std::mem::size_of::<Flow>();
        assert!(size <= 256, "a flow is {size} bytes");
    }
}

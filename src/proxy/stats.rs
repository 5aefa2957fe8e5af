//! Counters an operator would graph, logged on SIGUSR1 and at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Process-wide proxy counters. All relaxed: they are statistics, not locks.
#[derive(Debug)]
pub struct Stats {
    /// Client connections accepted.
    pub accepted: AtomicU64,
    /// Client connections open now.
    pub active: AtomicU64,
    /// Clients closed because no backend address could be reached.
    pub refused: AtomicU64,
    /// Bytes relayed client → backend (PROXY headers not included).
    pub bytes_to_backend: AtomicU64,
    /// Bytes relayed backend → client.
    pub bytes_to_client: AtomicU64,
    /// Chunks copied through user space because splice or a pipe was unavailable.
    pub splice_fallbacks: AtomicU64,
    /// accept(2) failures (EMFILE and the like); the listener backs off and retries.
    pub accept_errors: AtomicU64,
    /// Backend connection attempts that failed or timed out (per address).
    pub connect_errors: AtomicU64,
    /// Connections ended by a reset or I/O error (passed on as a reset).
    pub resets: AtomicU64,
    /// Connections closed by idle_timeout.
    pub idle_timeouts: AtomicU64,
    /// Half-closed connections closed by fin_timeout.
    pub fin_timeouts: AtomicU64,
    /// Connections reset because shutdown_timeout ran out.
    pub shutdown_resets: AtomicU64,
    /// New connections reset at once: their client address (IPv6: /64)
    /// already had max_connections_per_client.
    pub client_limit_resets: AtomicU64,
    /// UDP: see [`UdpStats`].
    pub udp: UdpStats,
    started: Instant,
    last_fallback_log: AtomicU64,
    last_client_limit_log: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            accepted: AtomicU64::new(0),
            active: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            bytes_to_backend: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            splice_fallbacks: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            idle_timeouts: AtomicU64::new(0),
            fin_timeouts: AtomicU64::new(0),
            shutdown_resets: AtomicU64::new(0),
            client_limit_resets: AtomicU64::new(0),
            udp: UdpStats::default(),
            started: Instant::now(),
            last_fallback_log: AtomicU64::new(0),
            last_client_limit_log: AtomicU64::new(0),
        }
    }
}

/// UDP flow counters. A datagram counts once however it was batched (a
/// GRO read of n segments is n datagrams).
#[derive(Debug, Default)]
pub struct UdpStats {
    /// Flows opened (first datagram from a client address).
    pub flows_opened: AtomicU64,
    /// Flows open now.
    pub flows_active: AtomicU64,
    /// Flows ended by udp_idle_timeout.
    pub flows_expired: AtomicU64,
    /// Datagrams and their payload bytes relayed client → backend.
    pub datagrams_to_backend: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    /// Datagrams and their payload bytes relayed backend → client.
    pub datagrams_to_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// ICMP errors the backend's host sent back (port unreachable while the
    /// backend restarts, and the like); the flow goes on.
    pub icmp_errors: AtomicU64,
    /// Datagrams from new clients dropped at udp_max_flows.
    pub dropped_max_flows: AtomicU64,
    /// Datagrams from new clients dropped because no socket could be made
    /// for their flow (out of file descriptors or memory).
    pub dropped_no_socket: AtomicU64,
    /// Datagrams dropped because the kernel refused to send them (send
    /// buffer full, no route, too large for the path).
    pub dropped_send: AtomicU64,
    /// Datagrams of a new flow whose backend name did not resolve to a
    /// usable address, or that came while it was being resolved and found
    /// the flow's small queue full.
    pub dropped_unresolved: AtomicU64,
    /// Reads that filled a whole receive slot, so might have been cut:
    /// dropped, never relayed. Impossible by construction (a slot holds more
    /// than any UDP payload); counted so that a kernel proving otherwise is
    /// seen.
    pub dropped_truncated: AtomicU64,
    /// GSO sends the kernel refused, whose datagrams then went one by one:
    /// EIO or EINVAL (a device that cannot segment; that socket sends
    /// datagram by datagram from then on), EMSGSIZE (segments larger than
    /// the MTU on the way out; single datagrams are fragmented).
    pub gso_fallbacks: AtomicU64,
}

/// Add `n` to a counter.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Add one to a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// Log every counter on one line.
    pub fn log(&self, when: &str) {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        tracing::info!(
            accepted = g(&self.accepted),
            active = g(&self.active),
            refused = g(&self.refused),
            bytes_to_backend = g(&self.bytes_to_backend),
            bytes_to_client = g(&self.bytes_to_client),
            splice_fallbacks = g(&self.splice_fallbacks),
            accept_errors = g(&self.accept_errors),
            connect_errors = g(&self.connect_errors),
            resets = g(&self.resets),
            idle_timeouts = g(&self.idle_timeouts),
            fin_timeouts = g(&self.fin_timeouts),
            shutdown_resets = g(&self.shutdown_resets),
            client_limit_resets = g(&self.client_limit_resets),
            "counters ({when})"
        );
        let u = &self.udp;
        if g(&u.flows_opened) + g(&u.dropped_max_flows) + g(&u.dropped_no_socket) > 0 {
            tracing::info!(
                udp_flows_opened = g(&u.flows_opened),
                udp_flows_active = g(&u.flows_active),
                udp_flows_expired = g(&u.flows_expired),
                udp_datagrams_to_backend = g(&u.datagrams_to_backend),
                udp_bytes_to_backend = g(&u.bytes_to_backend),
                udp_datagrams_to_client = g(&u.datagrams_to_client),
                udp_bytes_to_client = g(&u.bytes_to_client),
                udp_icmp_errors = g(&u.icmp_errors),
                udp_dropped_max_flows = g(&u.dropped_max_flows),
                udp_dropped_no_socket = g(&u.dropped_no_socket),
                udp_dropped_send = g(&u.dropped_send),
                udp_dropped_unresolved = g(&u.dropped_unresolved),
                udp_dropped_truncated = g(&u.dropped_truncated),
                udp_gso_fallbacks = g(&u.gso_fallbacks),
                "udp counters ({when})"
            );
        }
    }

    /// Count a user-space copy fallback; log it, at most once per 10 s
    /// (under EMFILE every chunk of every connection would otherwise log).
    pub fn splice_fallback(&self, why: &std::io::Error) {
        let total = self.splice_fallbacks.fetch_add(1, Ordering::Relaxed) + 1;
        if self.log_due(&self.last_fallback_log) {
            tracing::warn!(
                total_fallbacks = total,
                "splice unavailable ({why}): copying through user space"
            );
        }
    }

    /// Count a connection reset for max_connections_per_client; log it, at
    /// most once per 10 s (a client that hammers would otherwise fill the
    /// log).
    pub fn client_limited(&self, client: std::net::IpAddr, limit: usize) {
        let total = self.client_limit_resets.fetch_add(1, Ordering::Relaxed) + 1;
        if self.log_due(&self.last_client_limit_log) {
            let client = match client {
                std::net::IpAddr::V6(v6) => format!("{v6}/64"),
                v4 => v4.to_string(),
            };
            tracing::warn!(
                client = %client,
                total_client_limit_resets = total,
                "a client has max_connections_per_client ({limit}) connections: \
                 resetting its new ones"
            );
        }
    }

    /// True at most once per 10 s for each `last` (seconds since start).
    fn log_due(&self, last_log: &AtomicU64) -> bool {
        let now = self.started.elapsed().as_secs() + 1;
        let last = last_log.load(Ordering::Relaxed);
        // 0: never logged (now starts at 1).
        (last == 0 || now >= last + 10)
            && last_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Time since the proxy started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

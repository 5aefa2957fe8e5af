//! A TCP connection on the event loop: its state, the relay's steps in
//! both directions ([`crate::proxy::relay`]), how it ends, and its timers
//! (resolving and connecting within connect_timeout, idle_timeout,
//! fin_timeout).

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rustix::event::epoll::{self, EventFlags};

use super::{data, flags, ms, Engine, Entry};
use crate::mapping::Mapping;
use crate::proxy::proxy_protocol::unmap;
use crate::proxy::relay::{self, Ctx, End, Outcome, Pump, Wait};
use crate::proxy::stats::inc;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
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
pub(super) struct Conn {
    pub(super) client: End,
    pub(super) backend: Option<End>,
    pub(super) pumps: [Pump; 2],
    pub(super) mapping: Arc<Mapping>,
    pub(super) peer: SocketAddr,
    /// Addresses still to try, in order (while connecting).
    pub(super) addrs: Vec<SocketAddr>,
    /// Why earlier addresses failed (while connecting).
    pub(super) failures: String,
    pub(super) phase: Phase,
    pub(super) generation: u32,
    /// What each socket is registered for (client, backend); None: not
    /// registered.
    pub(super) registered: [Option<EventFlags>; 2],
    /// ms since the loop started: a byte last moved (or the connection
    /// began); one direction ended; the earliest timer queued for it.
    pub(super) last_active: u64,
    pub(super) half_closed: Option<u64>,
    pub(super) timer_at: u64,
}

impl Engine {
    /// Step both directions, then register each socket for what is waited
    /// on it.
    pub(super) fn drive(&mut self, key: usize) {
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
    pub(super) fn finish(&mut self, key: usize, outcome: Outcome) {
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

    pub(super) fn remove(&mut self, key: usize) {
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

    /// Make sure the connection's timer fires by `due`.
    pub(super) fn arm(&mut self, key: usize, due: u64) {
        if let Some(Entry::Conn(c)) = self.entries.get_mut(key) {
            if due < c.timer_at {
                c.timer_at = due;
                self.timers.push(Reverse((due, key, c.generation)));
            }
        }
    }

    pub(super) fn conn_timer(&mut self, key: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection's memory in the proxy is this, boxed (it was
    /// about 1.5 KiB as a tokio task with two registered sockets).
    #[test]
    fn a_connection_stays_small() {
        let size = std::mem::size_of::<Conn>();
        assert!(size <= 320, "Conn is {size} bytes");
    }
}

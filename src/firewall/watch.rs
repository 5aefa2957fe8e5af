//! `lowport rules watch`: apply, then keep the rules in force until stopped.
//!
//! One thread, one `poll(2)`: a signalfd (SIGHUP reloads, SIGTERM/SIGINT
//! stop), the nftables notification socket (nftables and iptables-nft
//! backends), and a timeout only when something is due (a back-off ending,
//! the iptables-legacy interval). Idle, the process sleeps in `poll` and
//! costs nothing.
//!
//! With nftables the table is created owned by the watch's netlink socket
//! (see [`super::nft::owner`]): `flush ruleset` skips it and other
//! processes cannot delete it, so there is nothing to heal. Notifications
//! cover the kernels without the owner flag and the iptables-nft backend;
//! iptables-legacy has no notifications and is read every interval.
//!
//! Whenever lowport's rules are found changed, the whole rule set goes back
//! in one transaction (the loopback guard with it) before any sysctl is
//! touched; when it cannot go back at once (a back-off, a refused batch),
//! route_localnet is turned off until the guard is back, so a loopback
//! target is never exposed to the LAN.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::iptables::{Iptables, IptablesFlavor};
use super::nft::monitor::{Interest, Monitor};
use super::nft::{owner, Claim, Nftables};
use super::plan::{RulePlan, Sysctl};
use super::{Backend, FirewallError, RulesError};
use crate::config::{BackendChoice, Config};

/// Settings of `rules watch` from the command line.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How often iptables-legacy rules are read (it has no notifications).
    pub interval: Duration,
    /// Leave the rules (and sysctls) in place on SIGTERM/SIGINT.
    pub keep_on_exit: bool,
}

/// What `reload` returns on SIGHUP: the new configuration and its plan, or
/// why the file cannot be used (logged; the running rules stay).
pub type Reload = Box<dyn FnMut() -> Result<(Config, RulePlan), String>>;

/// Why `rules watch` stopped with a failure.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot set up signal handling for rules watch")]
    Signals(#[source] io::Error),
    #[error("cannot subscribe to nftables notifications")]
    Monitor(#[source] io::Error),
    #[error("waiting for events failed")]
    Poll(#[source] io::Error),
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error(transparent)]
    Firewall(#[from] FirewallError),
}

/// Test hook: `LOWPORT_WATCH_TABLE_FLAGS=none|owner|owner,persist` caps
/// the table flags watch may use, to exercise the paths of kernels that
/// lack them (events-only healing before 5.12, no persistence before 6.9).
pub const TABLE_FLAGS_ENV: &str = "LOWPORT_WATCH_TABLE_FLAGS";

/// Back-off: this many re-applies within `FIGHT_WINDOW` is a fight.
const FIGHT_HEALS: usize = 5;
const FIGHT_WINDOW: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// After this long without a fight, the next one starts at the minimum.
const FIGHT_FORGOTTEN: Duration = Duration::from_secs(60);

/// The backend watch drives, with what it needs beyond [`Backend`].
enum Watched {
    Nft(Nftables),
    Iptables(Iptables),
}

impl Watched {
    fn backend(&mut self) -> &mut dyn Backend {
        match self {
            Watched::Nft(b) => b,
            Watched::Iptables(b) => b,
        }
    }

    /// Port id of our own batches' notifications.
    fn own_port(&self) -> Option<u32> {
        match self {
            Watched::Nft(b) => b.portid(),
            Watched::Iptables(_) => None,
        }
    }

    fn interest(&self) -> Option<Interest> {
        match self {
            Watched::Nft(_) => Some(Interest::InetTable),
            Watched::Iptables(b) if b.flavor() == IptablesFlavor::Nft => {
                Some(Interest::IptablesNft)
            }
            Watched::Iptables(_) => None,
        }
    }
}

fn open_backend(choice: BackendChoice) -> Result<Watched, FirewallError> {
    match choice {
        BackendChoice::Auto => {
            let (choice, why) = super::auto_choice();
            tracing::info!(backend = %choice, "backend auto: {why}");
            open_backend(choice)
        }
        BackendChoice::Iptables => Ok(Watched::Iptables(Iptables::detect()?)),
        BackendChoice::Nftables => {
            let allowed = match std::env::var(TABLE_FLAGS_ENV).as_deref() {
                Ok("none") => 0,
                Ok("owner") => owner::F_OWNER,
                _ => owner::F_OWNER | owner::F_PERSIST,
            };
            Ok(Watched::Nft(Nftables::for_watch(allowed)?))
        }
    }
}

/// Run `rules watch` until SIGTERM/SIGINT. `config` and `plan` are the
/// first configuration, `choice` the backend; `reload` is called on SIGHUP.
pub fn run(
    config: Config,
    plan: RulePlan,
    choice: BackendChoice,
    mut reload: Reload,
    opts: WatchOptions,
) -> Result<(), WatchError> {
    // Before anything else, so that a SIGTERM during the first apply is
    // queued for the loop instead of killing the process half-way.
    let signals =
        SignalFd::new(&[libc::SIGHUP, libc::SIGTERM, libc::SIGINT]).map_err(WatchError::Signals)?;
    let mut watched = open_backend(choice)?;
    // Subscribed before the first apply: nothing that happens after it
    // can be missed.
    let mut monitor = match watched.interest() {
        Some(i) => Some(Monitor::open(i).map_err(WatchError::Monitor)?),
        None => None,
    };
    let mut w = Watcher {
        config,
        plan,
        backoff: Backoff::default(),
        legacy_seen: None,
        route_localnet_lowered: false,
    };
    if let Watched::Nft(nft) = &mut watched {
        let flags = nft.table_flags();
        match nft.claim(&w.plan.rules)? {
            Claim::Adopted => tracing::info!(
                "adopted table inet lowport, left by an earlier watch; its rules kept serving"
            ),
            Claim::Replaced => {
                tracing::info!("replaced the unowned table inet lowport by an owned one")
            }
            Claim::Absent | Claim::Kept => {}
        }
        let mode = match flags {
            f if f & owner::F_PERSIST != 0 => {
                "owned and persistent: flush ruleset skips it, other processes cannot change it, \
                 and it outlives this process"
            }
            f if f & owner::F_OWNER != 0 => {
                "owned: flush ruleset skips it, other processes cannot change it \
                 (the kernel has no persist flag, Linux < 6.9: it goes when this process does)"
            }
            _ => "not owned (the kernel has no owner flag, Linux < 5.12): healed on change events",
        };
        tracing::info!("table inet lowport is {mode}");
    }
    // apply logs the sysctls it sets.
    super::apply(watched.backend(), &w.plan, &w.config.rules)?;
    if let Some(m) = monitor.as_mut() {
        // Our own batches' notifications; anything foreign is re-checked.
        if m.drain(watched.own_port())
            .map_err(WatchError::Monitor)?
            .foreign
        {
            w.check(&mut watched, "a change during start-up");
        }
    }
    w.legacy_seen = legacy_fingerprint(&watched);
    tracing::info!(
        backend = watched.backend().name(),
        mappings = w.config.mappings.len(),
        "rules in force; watching"
    );
    sd_notify(&format!(
        "READY=1\nSTATUS=watching {} mapping(s) ({})",
        w.config.mappings.len(),
        watched.backend().name()
    ));

    loop {
        let now = Instant::now();
        let interval_due =
            matches!(&watched, Watched::Iptables(b) if b.flavor() == IptablesFlavor::Legacy)
                .then_some(opts.interval);
        let backoff_left = w.backoff.until.map(|u| u.saturating_duration_since(now));
        let timeout = match (interval_due, backoff_left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // While backing off, notifications are not read: they would only
        // wake us to do nothing. They are drained when the wait ends.
        let watch_events = monitor.is_some() && w.backoff.until.is_none();
        let mut fds = vec![libc::pollfd {
            fd: signals.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let (true, Some(m)) = (watch_events, monitor.as_ref()) {
            fds.push(libc::pollfd {
                fd: m.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        poll(&mut fds, timeout).map_err(WatchError::Poll)?;

        if fds[0].revents & libc::POLLIN != 0 {
            match signals.read().map_err(WatchError::Signals)? {
                Some(libc::SIGHUP) => {
                    w.reload(&mut watched, &mut reload);
                    w.legacy_seen = legacy_fingerprint(&watched);
                    if let Some(m) = monitor.as_mut() {
                        let _ = m.drain(watched.own_port());
                    }
                    continue;
                }
                Some(sig) => {
                    tracing::info!(signal = sig, "stopping");
                    sd_notify("STOPPING=1");
                    return w.stop(&mut watched, &opts);
                }
                None => {}
            }
        }

        if let Some(until) = w.backoff.until {
            if Instant::now() < until {
                continue;
            }
            w.backoff.until = None;
            if let Some(m) = monitor.as_mut() {
                let _ = m.drain(watched.own_port());
            }
            w.check(&mut watched, "the end of a back-off");
            w.after_own_change(&mut watched, monitor.as_mut());
            continue;
        }

        if let Some(m) = monitor.as_mut() {
            if fds.get(1).is_some_and(|f| f.revents != 0) {
                let seen = match m.drain(watched.own_port()) {
                    Ok(seen) => seen,
                    Err(e) => {
                        tracing::warn!(error = %e, "reading nftables notifications failed");
                        continue;
                    }
                };
                if seen.overrun {
                    tracing::info!("notifications were lost (the kernel's queue overflowed); checking the rules");
                }
                if seen.foreign || seen.overrun {
                    w.check(&mut watched, "a change by another process");
                    w.after_own_change(&mut watched, monitor.as_mut());
                }
            }
        }

        if interval_due.is_some() {
            let now_seen = legacy_fingerprint(&watched);
            if now_seen != w.legacy_seen {
                w.check(&mut watched, "a change to the iptables-legacy tables");
                w.legacy_seen = legacy_fingerprint(&watched);
            }
        }
    }
}

/// The state of the loop besides the backend.
struct Watcher {
    config: Config,
    plan: RulePlan,
    backoff: Backoff,
    /// iptables-legacy: the tables' sizes at the last check.
    legacy_seen: Option<Vec<Option<(u32, u32)>>>,
    /// route_localnet was turned off because the guard is missing.
    route_localnet_lowered: bool,
}

impl Watcher {
    /// Read the rules; put them back when they differ from the plan.
    fn check(&mut self, watched: &mut Watched, cause: &str) {
        let found = watched.backend().list();
        let intact = matches!(&found, Ok(Some(r)) if *r == self.plan.rules);
        if intact && !self.route_localnet_lowered {
            tracing::debug!(cause, "rules intact");
            return;
        }
        let guard_missing =
            self.plan.rules.loopback_guard && !matches!(&found, Ok(Some(r)) if r.loopback_guard);
        let now = Instant::now();
        if let Some(delay) = self.backoff.record(now) {
            tracing::warn!(
                "something keeps changing lowport's rules ({FIGHT_HEALS} re-applies within {}); \
                 waiting {} before the next one",
                humantime::format_duration(FIGHT_WINDOW),
                humantime::format_duration(delay)
            );
            if guard_missing {
                self.lower_route_localnet();
            }
            return;
        }
        let started = Instant::now();
        match super::apply(watched.backend(), &self.plan, &self.config.rules) {
            Ok(_) => {
                self.route_localnet_lowered = false;
                tracing::info!(
                    cause,
                    took_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "lowport's rules were changed or removed; put back"
                );
            }
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "cannot put lowport's rules back; trying again later");
                if guard_missing {
                    self.lower_route_localnet();
                }
                self.backoff.fail(now);
            }
        }
    }

    /// Our own apply queued notifications (and a foreign change may have
    /// raced it): drain them, and read once more if anything foreign came.
    fn after_own_change(&mut self, watched: &mut Watched, monitor: Option<&mut Monitor>) {
        let Some(m) = monitor else { return };
        if self.backoff.until.is_some() {
            return;
        }
        match m.drain(watched.own_port()) {
            // iptables-nft's own restores come from other processes: the
            // read of the next check tells them from foreign changes.
            Ok(seen) if seen.foreign && matches!(watched, Watched::Nft(_)) => {
                self.check(watched, "a change by another process")
            }
            _ => {}
        }
    }

    /// Turn route_localnet off (back to what it was before lowport) while
    /// the guard is missing; the next successful apply turns it on again.
    fn lower_route_localnet(&mut self) {
        let keep: Vec<Sysctl> = self
            .plan
            .sysctls
            .iter()
            .copied()
            .filter(|s| *s != Sysctl::RouteLocalnet)
            .collect();
        let ledger = super::ledger::Ledger::lock(&super::ledger::state_dir());
        match ledger.and_then(|mut l| l.restore_except(&keep)) {
            Ok(changed) => {
                for (s, v) in changed {
                    tracing::warn!(sysctl = %s, value = v,
                        "lowport's loopback guard is missing: sysctl put back until the rules are");
                }
                self.route_localnet_lowered = true;
            }
            Err(e) => tracing::error!(error = %e, "cannot turn route_localnet off"),
        }
    }

    fn reload(&mut self, watched: &mut Watched, reload: &mut Reload) {
        sd_notify("RELOADING=1");
        match reload() {
            Err(e) => tracing::error!(
                "SIGHUP: the configuration cannot be used; the running rules stay: {e}"
            ),
            Ok((config, plan)) => {
                if config.rules.backend != self.config.rules.backend {
                    tracing::warn!("SIGHUP: a new rules.backend takes effect only on restart");
                }
                for w in &plan.warnings {
                    tracing::warn!("{w}");
                }
                match super::apply(watched.backend(), &plan, &config.rules) {
                    Ok(_) => {
                        tracing::info!(
                            mappings = config.mappings.len(),
                            "SIGHUP: configuration reloaded and applied"
                        );
                        self.config = config;
                        self.plan = plan;
                    }
                    Err(e) => tracing::error!(
                        error = %crate::error_chain(&e),
                        "SIGHUP: the new rules were not applied; the running rules stay"
                    ),
                }
            }
        }
        sd_notify(&format!(
            "READY=1\nSTATUS=watching {} mapping(s) ({})",
            self.config.mappings.len(),
            watched.backend().name()
        ));
    }

    fn stop(&mut self, watched: &mut Watched, opts: &WatchOptions) -> Result<(), WatchError> {
        if opts.keep_on_exit {
            if let Watched::Nft(nft) = watched {
                nft.release(&self.plan.rules)?;
            }
            tracing::info!("--keep-on-exit: rules and sysctls left in place");
            return Ok(());
        }
        let outcome = super::remove(watched.backend())?;
        for (s, v) in &outcome.sysctls {
            tracing::info!(sysctl = %s, value = v, "sysctl restored");
        }
        tracing::info!("rules removed");
        Ok(())
    }
}

/// Re-applies over time, to tell a fight from an accident.
#[derive(Debug, Default)]
struct Backoff {
    recent: VecDeque<Instant>,
    delay: Duration,
    /// No re-apply before this.
    until: Option<Instant>,
    last_fight: Option<Instant>,
}

impl Backoff {
    /// A re-apply is about to happen at `now`. `Some(delay)` when it is one
    /// too many: wait that long instead (`until` is set).
    fn record(&mut self, now: Instant) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > FIGHT_WINDOW)
        {
            self.recent.pop_front();
        }
        if self.recent.len() + 1 < FIGHT_HEALS {
            self.recent.push_back(now);
            return None;
        }
        self.recent.clear();
        Some(self.wait(now))
    }

    /// A re-apply failed: wait before the next.
    fn fail(&mut self, now: Instant) {
        self.wait(now);
    }

    fn wait(&mut self, now: Instant) -> Duration {
        let forgotten = self
            .last_fight
            .is_none_or(|t| now.duration_since(t) > FIGHT_FORGOTTEN);
        self.delay = if forgotten {
            BACKOFF_MIN
        } else {
            (self.delay * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
        };
        self.last_fight = Some(now);
        self.until = Some(now + self.delay);
        self.delay
    }
}

/// iptables-legacy: the size of each of lowport's tables, one getsockopt
/// each; any change to a table changes its size or entry count.
fn legacy_fingerprint(watched: &Watched) -> Option<Vec<Option<(u32, u32)>>> {
    match watched {
        Watched::Iptables(b) if b.flavor() == IptablesFlavor::Legacy => {
            Some(super::iptables::legacy_table_sizes())
        }
        _ => None,
    }
}

/// `poll(2)`, EINTR counted as "nothing ready".
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let ms = timeout.map_or(-1, |t| {
        // Round up, so a wait never ends just before its deadline.
        let ms = t.as_micros().div_ceil(1000);
        libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: `fds` is a valid slice of pollfd for the call; nfds is its length.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        for f in fds.iter_mut() {
            f.revents = 0;
        }
    }
    Ok(())
}

/// Signals delivered as readable events on a file descriptor.
struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Block `signals` for this thread (the only one) and read them here.
    fn new(signals: &[libc::c_int]) -> io::Result<SignalFd> {
        // SAFETY: a zeroed sigset_t is valid storage for sigemptyset, which
        // initialises it; sigaddset and pthread_sigmask get valid pointers.
        let fd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        Ok(SignalFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The next pending signal, if any.
    fn read(&self) -> io::Result<Option<libc::c_int>> {
        // SAFETY: signalfd_siginfo is plain data; zeroed is a valid value.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the fd is our signalfd; the pointer and length describe `info`.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok((n as usize == size).then_some(info.ssi_signo as libc::c_int))
    }
}

/// Tell systemd (Type=notify) how we are: a datagram to `$NOTIFY_SOCKET`
/// (sd_notify(3)'s protocol: a path, or an abstract name after `@`).
/// Nothing happens outside systemd; a failure is logged and ignored.
pub fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::warn!(socket = %path, error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_after_a_burst_and_doubles() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        for i in 0..FIGHT_HEALS - 1 {
            assert_eq!(b.record(t0 + Duration::from_millis(i as u64)), None);
        }
        assert_eq!(b.record(t0 + Duration::from_millis(10)), Some(BACKOFF_MIN));
        let t1 = t0 + Duration::from_millis(300);
        for i in 0..FIGHT_HEALS - 1 {
            assert_eq!(b.record(t1 + Duration::from_millis(i as u64)), None);
        }
        assert_eq!(
            b.record(t1 + Duration::from_millis(10)),
            Some(BACKOFF_MIN * 2)
        );
    }

    #[test]
    fn occasional_reapplies_never_back_off() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        for i in 0..50u64 {
            assert_eq!(b.record(t0 + Duration::from_millis(300 * i)), None);
        }
    }

    #[test]
    fn sd_notify_sends_to_the_socket() {
        let dir = std::env::temp_dir().join(format!("lowport-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // SAFETY (test): no other thread of this test reads NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        sd_notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

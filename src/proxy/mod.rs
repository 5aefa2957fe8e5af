//! `lowport proxy`: a small TCP relay from privileged ports to the
//! unprivileged server, for hosts where rules cannot be used.
//!
//! It owns the listeners (bound, or taken from systemd socket activation),
//! the connection cap, backend connection, PROXY headers, signals (SIGTERM
//! and SIGINT drain and exit, SIGHUP reloads, SIGUSR1 logs counters) and
//! shutdown. The bytes themselves move in [`relay`].
//!
//! Runtime: one current-thread tokio runtime. The relay is splice(2), so the
//! CPU does little per byte, one thread keeps every connection's state on
//! one core without locking, and capabilities (which are per thread) are
//! dropped before any thread exists.

pub mod listen;
pub mod pipe;
pub mod proxy_protocol;
pub mod relay;
pub mod stats;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::{Config, ProxySettings};
use crate::mapping::{Listen, Mapping, ProxyProtocol, Target, TargetHost};
use crate::privilege::{self, DropReport, PrivilegeError, PrivilegeState};
use pipe::PipePool;
use proxy_protocol::unmap;
use relay::{Outcome, Timeouts};
use stats::{inc, Stats};

/// Re-reads the configuration on SIGHUP; an error is logged and the running
/// configuration stays.
pub type Reload = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// Why the proxy could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The configuration cannot be served in proxy mode (exit code 2).
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {listen} for {mapping}{hint}")]
    Bind {
        listen: String,
        mapping: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },
    #[error("cannot drop privileges")]
    Privilege(#[source] PrivilegeError),
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error("cannot install the {0} handler")]
    Signal(&'static str, #[source] io::Error),
}

impl ProxyError {
    /// Process exit code: 2 for configuration problems, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ProxyError::Config(_) => 2,
            ProxyError::Privilege(
                PrivilegeError::NoSuchUser { .. } | PrivilegeError::UserIsRoot { .. },
            ) => 2,
            _ => 1,
        }
    }
}

/// Can this configuration be served by the proxy? UDP cannot: it is rules
/// mode only.
pub fn validate_for_proxy(config: &Config) -> Result<(), ProxyError> {
    for m in &config.mappings {
        if m.protocol.has_udp() {
            return Err(ProxyError::Config(format!(
                "{m}: protocol {} cannot be served by `lowport proxy`, which relays TCP only; \
                 use `lowport rules apply` for UDP, or set `protocol: tcp`",
                m.protocol
            )));
        }
    }
    if config.mappings.is_empty() {
        return Err(ProxyError::Config("no mappings to serve".to_owned()));
    }
    Ok(())
}

/// Raise the soft RLIMIT_NOFILE to the hard limit: each connection needs
/// two sockets and, while bytes are in flight, two pipe fds per direction.
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    // SAFETY: rlimit is plain old data, filled in by getrlimit.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut target = lim.rlim_max;
    if target == libc::RLIM_INFINITY {
        // "Unlimited" is refused for NOFILE; the kernel's ceiling is nr_open.
        target = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20);
    }
    if lim.rlim_cur < target {
        let new = libc::rlimit {
            rlim_cur: target,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `new` is a valid rlimit; raising soft up to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok((lim.rlim_cur, target));
    }
    Ok((lim.rlim_cur, lim.rlim_cur))
}

/// A listen spec's sockets, before the runtime exists.
#[derive(Debug)]
pub struct BoundListener {
    pub mapping: Mapping,
    pub sockets: Vec<std::net::TcpListener>,
    /// Came from systemd socket activation.
    pub activated: bool,
}

/// Bind (or take from socket activation) a socket for every mapping.
pub fn bind_all(config: &Config) -> Result<Vec<BoundListener>, ProxyError> {
    let (mut activated, problems) = listen::take_activated();
    for p in problems {
        warn!("{p}");
    }
    let mut out = Vec::new();
    for m in &config.mappings {
        let (mine, rest): (Vec<_>, Vec<_>) = activated
            .into_iter()
            .partition(|a| listen::activated_matches(&m.listen, a.addr));
        activated = rest;
        if !mine.is_empty() {
            for a in &mine {
                info!(
                    "socket activation: {} ({}) serves {m}",
                    a.addr,
                    a.name.as_deref().unwrap_or("unnamed")
                );
            }
            out.push(BoundListener {
                mapping: m.clone(),
                sockets: mine.into_iter().map(|a| a.listener).collect(),
                activated: true,
            });
            continue;
        }
        let sockets = listen::bind_listen(&m.listen).map_err(|source| bind_error(m, source))?;
        out.push(BoundListener {
            mapping: m.clone(),
            sockets,
            activated: false,
        });
    }
    for a in activated {
        warn!(
            "socket activation: {} ({}) matches no mapping; closed",
            a.addr,
            a.name.as_deref().unwrap_or("unnamed")
        );
    }
    Ok(out)
}

fn bind_error(m: &Mapping, source: io::Error) -> ProxyError {
    let hint = match source.raw_os_error() {
        Some(libc::EACCES) => {
            "; ports below 1024 need CAP_NET_BIND_SERVICE: start as root, give the binary \
             `setcap cap_net_bind_service=+ep`, use AmbientCapabilities= or socket activation"
        }
        Some(libc::EADDRINUSE) => "; another program already listens there",
        Some(libc::EADDRNOTAVAIL) => "; no local interface has that address",
        _ => "",
    };
    ProxyError::Bind {
        listen: m.listen.to_string(),
        mapping: m.to_string(),
        source,
        hint,
    }
}

/// Entry point for `lowport proxy`: validate, raise the fd limit, bind,
/// drop privileges, then serve on a current-thread runtime until SIGTERM or
/// SIGINT. Returns after a graceful drain.
pub fn main(config: Config, reload: Reload) -> Result<(), ProxyError> {
    validate_for_proxy(&config)?;
    match raise_nofile_limit() {
        Ok((old, new)) if old != new => debug!("RLIMIT_NOFILE raised from {old} to {new}"),
        Ok(_) => {}
        Err(e) => warn!("cannot raise RLIMIT_NOFILE: {e}"),
    }
    let bound = bind_all(&config)?;
    // Before any thread exists: capabilities are per thread.
    let report = privilege::drop_privileges(&config.proxy.user).map_err(ProxyError::Privilege)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ProxyError::Runtime)?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let mut term = signal(tokio::signal::unix::SignalKind::terminate(), "SIGTERM")?;
        let mut int = signal(tokio::signal::unix::SignalKind::interrupt(), "SIGINT")?;
        let token = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM: stopping"),
                _ = int.recv() => info!("SIGINT: stopping"),
            }
            token.cancel();
        });
        serve(bound, config, reload, shutdown, Some(report)).await
    })
}

fn signal(
    kind: tokio::signal::unix::SignalKind,
    name: &'static str,
) -> Result<tokio::signal::unix::Signal, ProxyError> {
    tokio::signal::unix::signal(kind).map_err(|e| ProxyError::Signal(name, e))
}

/// Bind every mapping (with the privileges the process has; nothing is
/// dropped) and serve until `shutdown` is cancelled. For embedding and
/// tests; `lowport proxy` uses [`main`].
pub async fn run(
    config: Config,
    reload: Reload,
    shutdown: CancellationToken,
) -> Result<(), ProxyError> {
    validate_for_proxy(&config)?;
    let bound = bind_all(&config)?;
    serve(bound, config, reload, shutdown, None).await
}

/// State shared by the listeners and connections.
struct Shared {
    stats: Stats,
    pool: Arc<PipePool>,
    limit: Arc<Semaphore>,
    max_connections: Mutex<usize>,
    settings: watch::Sender<Arc<ProxySettings>>,
    tracker: TaskTracker,
    /// Cancelled when shutdown_timeout runs out: live connections are reset.
    hard_stop: CancellationToken,
}

/// A running listen spec: its accept loops and the mapping they serve.
struct Running {
    mapping: watch::Sender<Arc<Mapping>>,
    stop: CancellationToken,
    addrs: Vec<SocketAddr>,
    activated: bool,
    /// The accept loops; each owns (and on return closes) one listening socket.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Serve already-bound listeners until `shutdown`; see [`main`].
pub async fn serve(
    bound: Vec<BoundListener>,
    config: Config,
    reload: Reload,
    shutdown: CancellationToken,
    privileges: Option<DropReport>,
) -> Result<(), ProxyError> {
    let shared = Arc::new(Shared {
        stats: Stats::default(),
        pool: PipePool::new(pipe::WANTED_PIPE_SIZE),
        limit: Arc::new(Semaphore::new(config.proxy.max_connections.get())),
        max_connections: Mutex::new(config.proxy.max_connections.get()),
        settings: watch::Sender::new(Arc::new(config.proxy.clone())),
        tracker: TaskTracker::new(),
        hard_stop: CancellationToken::new(),
    });
    let anchor = tokio::spawn(timer_anchor());
    let mut hup = signal(tokio::signal::unix::SignalKind::hangup(), "SIGHUP")?;
    let mut usr1 = signal(tokio::signal::unix::SignalKind::user_defined1(), "SIGUSR1")?;

    let mut running: HashMap<Listen, Running> = HashMap::new();
    let mut listing = Vec::new();
    for b in bound {
        let r = start_listener(b, &shared).map_err(ProxyError::Runtime)?;
        listing.push(describe(&r));
        let key = r.mapping.borrow().listen;
        running.insert(key, r);
    }
    let privilege_line = match &privileges {
        Some(report) => report.to_string(),
        None => PrivilegeState::current()
            .map(|s| format!("unchanged: {s}"))
            .unwrap_or_else(|e| format!("unknown ({e})")),
    };
    info!(
        "lowport proxy listening: {}; privileges: {privilege_line}",
        listing.join(", ")
    );
    let mut user = config.proxy.user.clone();

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = hup.recv() => {
                match reload() {
                    Ok(new) => apply_reload(new, &mut running, &shared, &mut user),
                    Err(e) => error!("SIGHUP: new configuration rejected, the old one keeps serving: {e}"),
                }
            }
            _ = usr1.recv() => shared.stats.log("SIGUSR1"),
        }
    }

    // Stop accepting: the listening sockets close as their loops end; wait
    // for that, so "stopped accepting" is true when it is logged.
    for r in running.values() {
        r.stop.cancel();
    }
    for r in running.into_values() {
        for t in r.tasks {
            let _ = t.await;
        }
    }
    shared.tracker.close();
    let grace = shared.settings.borrow().shutdown_timeout;
    let active = shared
        .stats
        .active
        .load(std::sync::atomic::Ordering::Relaxed);
    info!("stopped accepting; {active} connection(s) may finish within {grace:?}");
    if tokio::time::timeout(grace, shared.tracker.wait())
        .await
        .is_err()
    {
        warn!("shutdown_timeout ({grace:?}) ran out: resetting the remaining connections");
        shared.hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), shared.tracker.wait()).await;
    }
    anchor.abort();
    shared.stats.log("shutdown");
    Ok(())
}

/// A timer that is always due within a second. Tokio wakes its event loop
/// (a write to an eventfd) whenever a new timer is due before every timer
/// it already has; with short connections coming and going, each one's
/// timeout was often the earliest and cost that write. With this one in
/// place, a connection's timeout (at least a second away) never is.
async fn timer_anchor() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

fn describe(r: &Running) -> String {
    let m = r.mapping.borrow();
    let addrs: Vec<String> = r.addrs.iter().map(ToString::to_string).collect();
    format!(
        "{} -> {} [{}{}{}]",
        addrs.join(" "),
        m.target,
        m.label(),
        if r.activated {
            ", socket-activated"
        } else {
            ""
        },
        match m.proxy_protocol {
            ProxyProtocol::Off => "",
            ProxyProtocol::V1 => ", PROXY v1",
            ProxyProtocol::V2 => ", PROXY v2",
        }
    )
}

fn start_listener(b: BoundListener, shared: &Arc<Shared>) -> io::Result<Running> {
    let (tx, _) = watch::channel(Arc::new(b.mapping));
    let stop = CancellationToken::new();
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    for socket in b.sockets {
        let listener = TcpListener::from_std(socket)?;
        addrs.push(listener.local_addr()?);
        tasks.push(tokio::spawn(accept_loop(
            listener,
            tx.subscribe(),
            stop.clone(),
            Arc::clone(shared),
        )));
    }
    Ok(Running {
        mapping: tx,
        stop,
        addrs,
        activated: b.activated,
        tasks,
    })
}

fn apply_reload(
    new: Config,
    running: &mut HashMap<Listen, Running>,
    shared: &Arc<Shared>,
    user: &mut String,
) {
    if let Err(e) = validate_for_proxy(&new) {
        error!("SIGHUP: new configuration rejected, the old one keeps serving: {e}");
        return;
    }
    let mut kept = Vec::new();
    let mut added = Vec::new();
    let mut failed = Vec::new();
    let wanted: HashMap<Listen, &Mapping> = new.mappings.iter().map(|m| (m.listen, m)).collect();
    running.retain(|listen, r| {
        let keep = wanted.contains_key(listen);
        if !keep {
            info!("SIGHUP: closing {}", describe(r));
            r.stop.cancel();
        }
        keep
    });
    for m in &new.mappings {
        if let Some(r) = running.get(&m.listen) {
            r.mapping.send_replace(Arc::new(m.clone()));
            kept.push(m.listen.to_string());
            continue;
        }
        let bound = listen::bind_listen(&m.listen).map(|sockets| BoundListener {
            mapping: m.clone(),
            sockets,
            activated: false,
        });
        match bound.and_then(|b| start_listener(b, shared)) {
            Ok(r) => {
                added.push(describe(&r));
                running.insert(m.listen, r);
            }
            Err(e) => {
                error!(
                    "SIGHUP: {}; restart lowport to serve it",
                    error_chain(&bind_error(m, e))
                );
                failed.push(m.listen.to_string());
            }
        }
    }
    // Connection limit: grow at once; shrink by withholding permits as
    // connections end.
    let new_max = new.proxy.max_connections.get();
    if let Ok(mut max) = shared.max_connections.lock() {
        if new_max > *max {
            shared.limit.add_permits(new_max - *max);
        } else if new_max < *max {
            let fewer = u32::try_from(*max - new_max).unwrap_or(u32::MAX);
            let limit = Arc::clone(&shared.limit);
            tokio::spawn(async move {
                if let Ok(p) = limit.acquire_many_owned(fewer).await {
                    p.forget();
                }
            });
        }
        *max = new_max;
    }
    if new.proxy.user != *user {
        warn!(
            "SIGHUP: proxy.user changed to {:?}; it takes effect at the next start",
            new.proxy.user
        );
        *user = new.proxy.user.clone();
    }
    shared.settings.send_replace(Arc::new(new.proxy));
    info!(
        "reloaded configuration: kept [{}], added [{}], failed [{}]",
        kept.join(", "),
        added.join(", "),
        failed.join(", ")
    );
}

/// "error: cause: cause" on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Resource exhaustion: retrying at once would only spin.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

async fn accept_loop(
    listener: TcpListener,
    mapping: watch::Receiver<Arc<Mapping>>,
    stop: CancellationToken,
    shared: Arc<Shared>,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(10);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let mut backoff = Duration::ZERO;
    let mut failures = 0u64;
    // One wait on `stop` for the loop's life, not one registration per accept.
    let mut stopped = std::pin::pin!(stop.cancelled());
    loop {
        // Pause accepting at max_connections: clients wait in the backlog
        // instead of being refused.
        let permit = tokio::select! {
            p = Arc::clone(&shared.limit).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = &mut stopped => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut stopped => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                if failures > 0 {
                    info!("accepting again after {failures} failed accept(s)");
                    failures = 0;
                }
                backoff = Duration::ZERO;
                let m = Arc::clone(&mapping.borrow());
                let shared2 = Arc::clone(&shared);
                shared
                    .tracker
                    .spawn(handle(stream, peer, m, shared2, permit));
            }
            Err(e) => {
                inc(&shared.stats.accept_errors);
                failures += 1;
                drop(permit);
                if is_resource_error(&e) {
                    // The pending connection keeps the listener readable: back
                    // off (doubling up to 1 s) instead of spinning on it.
                    backoff = (backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                    if failures == 1 {
                        warn!(
                            "accept on {:?}: {e}; backing off and retrying",
                            listener.local_addr().ok()
                        );
                    }
                } else {
                    // Per-connection errors (ECONNABORTED and the like).
                    debug!("accept: {e}");
                    backoff = Duration::ZERO;
                    continue;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut stopped => return,
                }
            }
        }
    }
}

/// Counts a connection as active for its lifetime.
struct ActiveGuard<'a>(&'a Stats);

impl<'a> ActiveGuard<'a> {
    fn new(stats: &'a Stats) -> Self {
        inc(&stats.accepted);
        stats
            .active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ActiveGuard(stats)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A log event about one connection, naming its client and mapping. Fields
/// are evaluated only when the level is enabled: unlike a span per
/// connection, nothing is formatted or allocated for a connection that
/// logs nothing.
macro_rules! conn_log {
    ($level:ident, $peer:expr, $mapping:expr, $($arg:tt)+) => {
        tracing::$level!(client = %unmap($peer), mapping = %$mapping.label(), $($arg)+)
    };
}

async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    mapping: Arc<Mapping>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
) {
    let _active = ActiveGuard::new(&shared.stats);
    let settings = Arc::clone(&shared.settings.borrow());
    // TCP_NODELAY: inherited from the listener (see listen.rs).
    // The accepted socket's own address: only a PROXY header and the
    // "this machine" target need it (one getsockname saved otherwise).
    let needs_local = mapping.proxy_protocol != ProxyProtocol::Off
        || matches!(mapping.target.host, TargetHost::Local);
    let local = if needs_local {
        match client.local_addr() {
            Ok(a) => Some(a),
            Err(e) => {
                conn_log!(
                    debug,
                    peer,
                    mapping,
                    "client gone before it was served: {e}"
                );
                return;
            }
        }
    } else {
        None
    };
    let connect = connect_backend(
        &mapping.target,
        local,
        settings.connect_timeout,
        &shared.stats,
    );
    let backend = tokio::select! {
        r = connect => r,
        () = shared.hard_stop.cancelled() => Err("shutting down".to_owned()),
    };
    let backend = match backend {
        Ok(b) => b,
        Err(why) => {
            conn_log!(
                warn,
                peer,
                mapping,
                "no backend for {}: {why}; closing the client",
                mapping.target
            );
            inc(&shared.stats.refused);
            relay::arm_reset(&client);
            return;
        }
    };
    // TCP_NODELAY: set before connecting (connect_one).
    conn_log!(debug, peer, mapping, backend = ?backend.peer_addr().ok(), "connected");
    if let (ProxyProtocol::V1 | ProxyProtocol::V2, Some(local)) = (mapping.proxy_protocol, local) {
        let header = proxy_protocol::header(mapping.proxy_protocol, peer, local);
        if let Err(e) = relay::write_all(&backend, &header).await {
            conn_log!(
                warn,
                peer,
                mapping,
                "cannot send the PROXY header to the backend: {e}"
            );
            inc(&shared.stats.resets);
            relay::arm_reset(&client);
            relay::arm_reset(&backend);
            return;
        }
    }
    let timeouts = Timeouts {
        idle: settings.idle_timeout,
        fin: settings.fin_timeout,
    };
    let outcome = relay::relay(
        &client,
        &backend,
        &shared.pool,
        &shared.stats,
        timeouts,
        &shared.hard_stop,
    )
    .await;
    match outcome {
        Outcome::Closed => conn_log!(debug, peer, mapping, "closed"),
        Outcome::IdleTimeout => {
            inc(&shared.stats.idle_timeouts);
            conn_log!(debug, peer, mapping, "idle for {:?}: closed", timeouts.idle);
        }
        Outcome::FinTimeout => {
            inc(&shared.stats.fin_timeouts);
            conn_log!(
                debug,
                peer,
                mapping,
                "half-closed for {:?}: closed",
                timeouts.fin
            );
        }
        Outcome::Failed(e) => {
            inc(&shared.stats.resets);
            conn_log!(debug, peer, mapping, "{e}: resetting both sides");
            relay::arm_reset(&client);
            relay::arm_reset(&backend);
        }
        Outcome::Shutdown => {
            inc(&shared.stats.shutdown_resets);
            conn_log!(
                debug,
                peer,
                mapping,
                "shutdown_timeout ran out: resetting both sides"
            );
            relay::arm_reset(&client);
            relay::arm_reset(&backend);
        }
    }
}

/// Connect to each address of the target in turn, each with its own timeout.
async fn connect_backend(
    target: &Target,
    local: Option<SocketAddr>,
    timeout: Duration,
    stats: &Stats,
) -> Result<TcpStream, String> {
    let port = target.port.get();
    let addrs: Vec<SocketAddr> = match &target.host {
        // "This machine": loopback, in the family the client came in first.
        TargetHost::Local => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
            let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
            if local.is_some_and(|l| unmap(l).is_ipv6()) {
                vec![v6, v4]
            } else {
                vec![v4, v6]
            }
        }
        TargetHost::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        TargetHost::Name(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {name}: {e}"))?
            .collect(),
    };
    let mut failures = Vec::new();
    for addr in addrs {
        let attempt = match connect_one(addr, timeout).await {
            Ok(stream) => return Ok(stream),
            Err(Attempt::Socket(e)) => format!("{addr}: cannot make a socket: {e}"),
            Err(Attempt::Failed(e)) => format!("{addr}: {e}"),
            Err(Attempt::TimedOut) => {
                format!("{addr}: no answer within connect_timeout {timeout:?}")
            }
        };
        inc(&stats.connect_errors);
        failures.push(attempt);
    }
    if failures.is_empty() {
        failures.push("the name resolved to no address".to_owned());
    }
    Err(failures.join("; "))
}

/// Why one connect attempt failed.
enum Attempt {
    Socket(io::Error),
    Failed(io::Error),
    TimedOut,
}

/// One non-blocking connect, with TCP_NODELAY set before it. On loopback
/// (and often on a LAN) the handshake is over by the time connect(2)
/// returns EINPROGRESS: a zero-timeout poll(2) sees it, and the connection
/// goes on without a trip through the event loop or a timer. Otherwise it
/// waits for writability, at most `timeout`.
async fn connect_one(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Attempt> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )
    .map_err(Attempt::Socket)?;
    socket.set_tcp_nodelay(true).map_err(Attempt::Socket)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(Attempt::Failed(e)),
    }
    let now = handshake_now(&socket);
    let stream = TcpStream::from_std(socket.into()).map_err(Attempt::Socket)?;
    match now {
        // Connected, and no error pending: nothing more to ask.
        Handshake::Connected => return Ok(stream),
        Handshake::Ended => {}
        Handshake::Pending => match tokio::time::timeout(timeout, stream.writable()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Attempt::Failed(e)),
            Err(_) => return Err(Attempt::TimedOut),
        },
    }
    // Writable means the handshake ended: in a connection or an error.
    match stream.take_error() {
        Ok(None) => Ok(stream),
        Ok(Some(e)) | Err(e) => Err(Attempt::Failed(e)),
    }
}

/// Where a connecting socket's handshake stands right now.
enum Handshake {
    /// Writable with no error flagged.
    Connected,
    /// Over, with an error flagged (SO_ERROR tells which).
    Ended,
    /// Still going.
    Pending,
}

fn handshake_now(socket: &socket2::Socket) -> Handshake {
    use std::os::fd::AsRawFd;
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
    use crate::mapping::{Listen, Protocol};
    use std::num::NonZeroU16;

    fn mapping(protocol: Protocol) -> Mapping {
        Mapping {
            index: 0,
            name: Some("h3".to_owned()),
            listen: Listen {
                addr: None,
                port: NonZeroU16::new(443).expect("port"),
            },
            target: Target {
                host: TargetHost::Local,
                port: NonZeroU16::new(8443).expect("port"),
            },
            protocol,
            proxy_protocol: ProxyProtocol::Off,
        }
    }

    #[test]
    fn udp_is_rules_mode_only() {
        for p in [Protocol::Udp, Protocol::Both] {
            let config = Config {
                mappings: vec![mapping(p)],
                ..Default::default()
            };
            let e = validate_for_proxy(&config).expect_err("udp refused");
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("rules apply"), "{e}");
            assert!(e.to_string().contains("\"h3\""), "{e}");
        }
        let ok = Config {
            mappings: vec![mapping(Protocol::Tcp)],
            ..Default::default()
        };
        assert!(validate_for_proxy(&ok).is_ok());
    }
}

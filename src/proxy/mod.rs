//! `lowport proxy`: a small TCP and UDP relay from privileged ports to the
//! unprivileged server, for hosts where rules cannot be used (UDP flows:
//! [`engine`]'s `udp` module).
//!
//! It owns the listeners (bound, or taken from systemd socket activation),
//! the connection cap, backend connection, PROXY headers, signals (SIGTERM
//! and SIGINT drain and exit, SIGHUP reloads, SIGUSR1 logs counters) and
//! shutdown. The bytes themselves move in [`relay`].
//!
//! Threads: the connections live on one thread, an epoll event loop of
//! their own ([`engine`]): the relay is splice(2), so the CPU does little
//! per byte, and one thread keeps every connection's state on one core
//! without locking. A current-thread tokio runtime on the main thread
//! handles signals, reloads, name resolution and shutdown. Capabilities
//! (which are per thread) are dropped before either thread exists.

pub mod engine;
pub mod listen;
pub mod pipe;
pub mod proxy_protocol;
pub mod relay;
pub mod stats;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, ProxySettings};
use crate::mapping::{Listen, Mapping, ProxyProtocol, L4};
use crate::privilege::{self, DropReport, PrivilegeError, PrivilegeState};
use engine::{Command, Engine, EngineHandle, Resolve};
use pipe::PipePool;
use stats::Stats;

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
    /// The connections' event loop could not start or stopped on its own.
    #[error("the relay's event loop failed")]
    Relay(#[source] io::Error),
    #[error("cannot install the {0} handler")]
    Signal(&'static str, #[source] io::Error),
}

impl ProxyError {
    /// Process exit code: 2 for configuration problems, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ProxyError::Config(_) => 2,
            ProxyError::Privilege(
                PrivilegeError::NoSuchUser { .. }
                | PrivilegeError::UserIsRoot { .. }
                | PrivilegeError::GroupIsRoot { .. },
            ) => 2,
            _ => 1,
        }
    }
}

/// Can this configuration be served by the proxy? UDP can, but without a
/// PROXY header (there is no stream to put it in front of).
pub fn validate_for_proxy(config: &Config) -> Result<(), ProxyError> {
    for m in &config.mappings {
        if !m.protocol.has_udp() {
            continue;
        }
        if m.proxy_protocol != ProxyProtocol::Off {
            return Err(ProxyError::Config(format!(
                "{m}: proxy_protocol cannot be sent over UDP (protocol {}); set \
                 `proxy_protocol: off`, or put the TCP side in a mapping of its own with \
                 `protocol: tcp`",
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

/// One protocol's sockets for a listen spec.
#[derive(Debug)]
pub enum Sockets {
    Tcp(Vec<std::net::TcpListener>),
    Udp(Vec<std::net::UdpSocket>),
}

impl Sockets {
    fn l4(&self) -> L4 {
        match self {
            Sockets::Tcp(_) => L4::Tcp,
            Sockets::Udp(_) => L4::Udp,
        }
    }

    fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        match self {
            Sockets::Tcp(s) => s.iter().map(std::net::TcpListener::local_addr).collect(),
            Sockets::Udp(s) => s.iter().map(std::net::UdpSocket::local_addr).collect(),
        }
    }
}

/// A listen spec's sockets for one protocol (a `both` mapping has two),
/// before the runtime exists.
#[derive(Debug)]
pub struct BoundListener {
    pub mapping: Mapping,
    pub sockets: Sockets,
    /// Came from systemd socket activation.
    pub activated: bool,
}

/// Bind a listen spec's sockets for one protocol.
fn bind_l4(listen: &Listen, l4: L4) -> io::Result<Sockets> {
    Ok(match l4 {
        L4::Tcp => Sockets::Tcp(listen::bind_listen(listen)?),
        L4::Udp => Sockets::Udp(listen::bind_listen_udp(listen)?),
    })
}

/// Bind (or take from socket activation) the sockets of every mapping,
/// for each of its protocols.
pub fn bind_all(config: &Config) -> Result<Vec<BoundListener>, ProxyError> {
    let (mut activated, problems) = listen::take_activated();
    for p in problems {
        warn!("{p}");
    }
    let mut out = Vec::new();
    for m in &config.mappings {
        for l4 in m.protocol.l4s() {
            let (mine, rest): (Vec<_>, Vec<_>) = activated
                .into_iter()
                .partition(|a| a.l4 == l4 && listen::activated_matches(&m.listen, a.addr));
            activated = rest;
            if !mine.is_empty() {
                for a in &mine {
                    info!(
                        "socket activation: {} ({}, {l4}) serves {m}",
                        a.addr,
                        a.name.as_deref().unwrap_or("unnamed")
                    );
                }
                let sockets = match l4 {
                    L4::Tcp => Sockets::Tcp(mine.into_iter().map(|a| a.socket.into()).collect()),
                    L4::Udp => Sockets::Udp(mine.into_iter().map(|a| a.socket.into()).collect()),
                };
                out.push(BoundListener {
                    mapping: m.clone(),
                    sockets,
                    activated: true,
                });
                continue;
            }
            let sockets = bind_l4(&m.listen, l4).map_err(|source| bind_error(m, l4, source))?;
            out.push(BoundListener {
                mapping: m.clone(),
                sockets,
                activated: false,
            });
        }
    }
    for a in activated {
        warn!(
            "socket activation: {} ({}, {}) matches no mapping; closed",
            a.addr,
            a.name.as_deref().unwrap_or("unnamed"),
            a.l4
        );
    }
    Ok(out)
}

/// Is the running binary on a nosuid mount? There a file capability is
/// ignored, so suggesting setcap would mislead.
fn exe_on_nosuid_mount() -> bool {
    // SAFETY: statvfs writes only into the zeroed struct it is given; the
    // path is a NUL-terminated literal (statvfs follows the /proc link).
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        libc::statvfs(c"/proc/self/exe".as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_NOSUID != 0
    }
}

fn bind_error(m: &Mapping, l4: L4, source: io::Error) -> ProxyError {
    let hint = match source.raw_os_error() {
        Some(libc::EACCES) if exe_on_nosuid_mount() => {
            "; this binary is on a nosuid mount, where the kernel ignores file capabilities \
             (setcap cannot help there): run it from a filesystem without nosuid, start it as \
             root, use AmbientCapabilities= or socket activation"
        }
        Some(libc::EACCES) => {
            "; ports below 1024 need CAP_NET_BIND_SERVICE: start as root, give the binary \
             `setcap cap_net_bind_service=+ep`, use AmbientCapabilities= or socket activation"
        }
        Some(libc::EADDRINUSE) => "; another program already listens there",
        Some(libc::EADDRNOTAVAIL) => "; no local interface has that address",
        _ => "",
    };
    ProxyError::Bind {
        listen: format!("{}/{l4}", m.listen),
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

/// A running listen spec and protocol, as the control plane knows it.
struct Running {
    mapping: Arc<Mapping>,
    l4: L4,
    addrs: Vec<SocketAddr>,
    activated: bool,
}

/// What a running listener is known by: a `both` mapping is two.
type RunKey = (Listen, L4);

/// Serve already-bound listeners until `shutdown`; see [`main`]. The
/// connections live on an event loop of their own ([`engine`]), on one
/// thread; this task handles signals, reloads, name resolution and the
/// drain at shutdown.
pub async fn serve(
    bound: Vec<BoundListener>,
    config: Config,
    reload: Reload,
    shutdown: CancellationToken,
    privileges: Option<DropReport>,
) -> Result<(), ProxyError> {
    let stats = Arc::new(Stats::default());
    let (resolve_tx, resolve_rx) = tokio::sync::mpsc::unbounded_channel();
    let engine = Engine::new(
        Arc::new(config.proxy.clone()),
        Arc::clone(&stats),
        PipePool::new(pipe::WANTED_PIPE_SIZE),
        resolve_tx,
    )
    .map_err(ProxyError::Relay)?;
    let handle = engine.handle();
    let mut hup = signal(tokio::signal::unix::SignalKind::hangup(), "SIGHUP")?;
    let mut usr1 = signal(tokio::signal::unix::SignalKind::user_defined1(), "SIGUSR1")?;

    let mut running: HashMap<RunKey, Running> = HashMap::new();
    let mut listing = Vec::new();
    for b in bound {
        let (key, r, sockets) = running_of(b).map_err(ProxyError::Relay)?;
        listing.push(describe(&r));
        listen_on(&handle, key.0, &r, sockets);
        running.insert(key, r);
    }
    let (done_tx, mut done) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("lowport-relay".to_owned())
        .spawn(move || {
            let _ = done_tx.send(engine.run());
        })
        .map_err(ProxyError::Relay)?;
    let resolver = tokio::spawn(resolve_names(resolve_rx, handle.clone()));
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
    let mut settings = Arc::new(config.proxy.clone());

    let ended = loop {
        tokio::select! {
            () = shutdown.cancelled() => break None,
            r = &mut done => break Some(r),
            _ = hup.recv() => {
                match reload() {
                    Ok(new) => apply_reload(new, &mut running, &handle, &mut settings),
                    Err(e) => error!("SIGHUP: new configuration rejected, the old one keeps serving: {e}"),
                }
            }
            _ = usr1.recv() => stats.log("SIGUSR1"),
        }
    };
    if let Some(r) = ended {
        // The event loop is not supposed to end on its own.
        resolver.abort();
        let _ = thread.join();
        let e = match r {
            Ok(Err(e)) => e,
            _ => io::Error::other("the relay thread ended"),
        };
        return Err(ProxyError::Relay(e));
    }

    // Stop accepting: the listening sockets are closed when the event loop
    // answers, so "stopped accepting" is true when it is logged.
    let (ack_tx, ack_rx) = tokio::sync::oneshot::channel();
    handle.send(Command::Drain(ack_tx));
    let active = ack_rx.await.unwrap_or(0);
    let grace = settings.shutdown_timeout;
    info!("stopped accepting; {active} connection(s) may finish within {grace:?}");
    if tokio::time::timeout(grace, &mut done).await.is_err() {
        warn!("shutdown_timeout ({grace:?}) ran out: resetting the remaining connections");
        handle.send(Command::HardStop);
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut done).await;
    }
    resolver.abort();
    let _ = thread.join();
    stats.log("shutdown");
    Ok(())
}

/// Resolve backend names for the event loop, each lookup on tokio's
/// blocking pool, and send the answers back. One lookup per name and port
/// at a time: connections that ask while it runs share its answer, so a
/// burst of clients (or a resolver that does not answer) costs one
/// getaddrinfo, not one blocked thread per client.
async fn resolve_names(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Resolve>,
    handle: EngineHandle,
) {
    type Answer = ((String, u16), Result<Vec<SocketAddr>, String>);
    let mut waiting: HashMap<(String, u16), Vec<(usize, u32)>> = HashMap::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Answer>();
    loop {
        tokio::select! {
            asked = rx.recv() => {
                let Some(r) = asked else { return };
                let key = (r.name, r.port);
                if let Some(conns) = waiting.get_mut(&key) {
                    conns.push((r.conn, r.generation));
                    continue;
                }
                waiting.insert(key.clone(), vec![(r.conn, r.generation)]);
                let done = done_tx.clone();
                tokio::spawn(async move {
                    let addrs = tokio::net::lookup_host((key.0.as_str(), key.1))
                        .await
                        .map(|a| a.collect())
                        .map_err(|e| format!("cannot resolve {}: {e}", key.0));
                    let _ = done.send((key, addrs));
                });
            }
            Some((key, addrs)) = done_rx.recv() => {
                for (conn, generation) in waiting.remove(&key).unwrap_or_default() {
                    handle.send(Command::Resolved {
                        conn,
                        generation,
                        addrs: addrs.clone(),
                    });
                }
            }
        }
    }
}

/// Split a bound listen spec into what the control plane keeps and the
/// sockets the event loop serves.
fn running_of(b: BoundListener) -> io::Result<(RunKey, Running, Sockets)> {
    let addrs = b.sockets.local_addrs()?;
    let l4 = b.sockets.l4();
    let key = (b.mapping.listen, l4);
    let r = Running {
        mapping: Arc::new(b.mapping),
        l4,
        addrs,
        activated: b.activated,
    };
    Ok((key, r, b.sockets))
}

/// Hand a listen spec's sockets to the event loop.
fn listen_on(handle: &EngineHandle, key: Listen, r: &Running, sockets: Sockets) {
    let mapping = Arc::clone(&r.mapping);
    handle.send(match sockets {
        Sockets::Tcp(sockets) => Command::Listen {
            key,
            mapping,
            sockets,
        },
        Sockets::Udp(sockets) => Command::UdpListen {
            key,
            mapping,
            sockets,
        },
    });
}

fn describe(r: &Running) -> String {
    let m = &r.mapping;
    let addrs: Vec<String> = r
        .addrs
        .iter()
        .map(|a| match r.l4 {
            L4::Tcp => a.to_string(),
            L4::Udp => format!("{a}/udp"),
        })
        .collect();
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

fn apply_reload(
    new: Config,
    running: &mut HashMap<RunKey, Running>,
    handle: &EngineHandle,
    settings: &mut Arc<ProxySettings>,
) {
    if let Err(e) = validate_for_proxy(&new) {
        error!("SIGHUP: new configuration rejected, the old one keeps serving: {e}");
        return;
    }
    let mut kept = Vec::new();
    let mut added = Vec::new();
    let mut failed = Vec::new();
    let wanted: HashMap<RunKey, &Mapping> = new
        .mappings
        .iter()
        .flat_map(|m| m.protocol.l4s().map(move |l4| ((m.listen, l4), m)))
        .collect();
    running.retain(|&(listen, l4), r| {
        let keep = wanted.contains_key(&(listen, l4));
        if !keep {
            info!("SIGHUP: closing {}", describe(r));
            handle.send(match l4 {
                L4::Tcp => Command::Unlisten { key: listen },
                L4::Udp => Command::UdpUnlisten { key: listen },
            });
        }
        keep
    });
    for m in &new.mappings {
        for l4 in m.protocol.l4s() {
            let shown = match l4 {
                L4::Tcp => m.listen.to_string(),
                L4::Udp => format!("{}/udp", m.listen),
            };
            if let Some(r) = running.get_mut(&(m.listen, l4)) {
                r.mapping = Arc::new(m.clone());
                let mapping = Arc::clone(&r.mapping);
                handle.send(match l4 {
                    L4::Tcp => Command::Remap {
                        key: m.listen,
                        mapping,
                    },
                    L4::Udp => Command::UdpRemap {
                        key: m.listen,
                        mapping,
                    },
                });
                kept.push(shown);
                continue;
            }
            let bound = bind_l4(&m.listen, l4).map(|sockets| BoundListener {
                mapping: m.clone(),
                sockets,
                activated: false,
            });
            match bound.and_then(running_of) {
                Ok((key, r, sockets)) => {
                    added.push(describe(&r));
                    listen_on(handle, key.0, &r, sockets);
                    running.insert(key, r);
                }
                Err(e) => {
                    error!(
                        "SIGHUP: {}; restart lowport to serve it",
                        crate::error_chain(&bind_error(m, l4, e))
                    );
                    failed.push(shown);
                }
            }
        }
    }
    if new.proxy.user != settings.user {
        warn!(
            "SIGHUP: proxy.user changed to {:?}; it takes effect at the next start",
            new.proxy.user
        );
    }
    // Timeouts apply to live connections from their next timer on; a lower
    // max_connections lets live connections end before accepting resumes.
    *settings = Arc::new(new.proxy);
    handle.send(Command::Settings(Arc::clone(settings)));
    info!(
        "reloaded configuration: kept [{}], added [{}], failed [{}]",
        kept.join(", "),
        added.join(", "),
        failed.join(", ")
    );
}

/// Resource exhaustion: retrying at once would only spin.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{Listen, Protocol, Target, TargetHost};
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
    fn udp_is_served_without_proxy_protocol() {
        for p in [Protocol::Udp, Protocol::Both] {
            let config = Config {
                mappings: vec![mapping(p)],
                ..Default::default()
            };
            assert!(validate_for_proxy(&config).is_ok(), "{p}");
            let mut m = mapping(p);
            m.proxy_protocol = ProxyProtocol::V2;
            let config = Config {
                mappings: vec![m],
                ..Default::default()
            };
            let e = validate_for_proxy(&config).expect_err("PROXY over UDP refused");
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("\"h3\""), "{e}");
            assert!(e.to_string().contains("proxy_protocol"), "{e}");
            let mut m = mapping(p);
            m.target.host = TargetHost::Name("backend".to_owned());
            let config = Config {
                mappings: vec![m],
                ..Default::default()
            };
            assert!(validate_for_proxy(&config).is_ok(), "UDP to a name, {p}");
        }
        let mut tcp = mapping(Protocol::Tcp);
        tcp.proxy_protocol = ProxyProtocol::V2;
        let ok = Config {
            mappings: vec![tcp],
            ..Default::default()
        };
        assert!(validate_for_proxy(&ok).is_ok());
    }
}

//! `lowport check`: validate the configuration, then diagnose this host,
//! one finding a line (✓ fine, ✗ missing, ! worth knowing), each problem
//! with the command or setting that fixes it, and close with the simplest
//! way to serve these mappings here.
//!
//! What a host needs depends on how it serves the mappings, so the mode is
//! found first: *rules* when lowport's rules are installed, *proxy* when a
//! `lowport` process listens on a mapped port, *none* otherwise. Problems
//! of the mode in use are ✗ (exit 1); those of the other mode are ! (they
//! only matter if the host switches).
//!
//! Everything here reads: `/proc/net/{tcp,udp}{,6}` and `/proc/*/fd` for
//! listeners, `nft -j list ruleset` and `iptables-legacy-save` for other
//! firewalls (diagnosis only; the rules backends stay as they are), the
//! binary's `security.capability` xattr, `/proc/self/mountinfo`.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;
use serde_json::Value;

use crate::config::{BackendChoice, Config, Source};
use crate::firewall::plan::{self, RulePlan, Sysctl, NAT_PRIORITY};
use crate::firewall::{self, iptables};
use crate::mapping::{Mapping, ProxyProtocol, TargetHost, L4};

/// Priority of the nat chains iptables (both flavours) puts lowport's
/// chains in: `NF_IP_PRI_NAT_DST`.
const IPTABLES_NAT_PRIORITY: i64 = -100;
/// `CAP_NET_BIND_SERVICE`, bit 10 of the capability sets.
const CAP_NET_BIND_SERVICE: u32 = 10;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// In place. Printed ✓.
    Ok,
    /// Missing or broken for the way this host serves the mappings: exit 1. Printed ✗.
    Problem,
    /// Worth knowing; does not fail the check. Printed !.
    Warning,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✓",
            Status::Problem => "✗",
            Status::Warning => "!",
        }
    }
}

/// One line of the diagnosis.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub status: Status,
    /// What was looked at: `config`, `target`, `rules`, `sysctl`, `input`,
    /// `nat`, `proxy`.
    pub topic: &'static str,
    pub message: String,
    /// The command or setting that fixes a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// How this host serves the mappings now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// lowport's NAT rules are installed.
    Rules,
    /// A lowport proxy listens on a mapped port.
    Proxy,
    /// Neither.
    None,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Rules => "rules",
            Mode::Proxy => "proxy",
            Mode::None => "none",
        })
    }
}

/// The whole diagnosis.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub mode: Mode,
    pub findings: Vec<Finding>,
    pub recommendation: String,
}

impl Report {
    /// Text for people: one line per finding, fixes indented below.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&format!("{} {}: {}\n", f.status.mark(), f.topic, f.message));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("    fix: {fix}\n"));
            }
        }
        out.push_str(&format!("→ {}\n", self.recommendation));
        out
    }

    /// JSON for machines.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

struct Findings(Vec<Finding>);

impl Findings {
    fn push(&mut self, status: Status, topic: &'static str, message: String, fix: Option<String>) {
        self.0.push(Finding {
            status,
            topic,
            message,
            fix,
        });
    }
    fn ok(&mut self, topic: &'static str, message: String) {
        self.push(Status::Ok, topic, message, None);
    }
    fn warn(&mut self, topic: &'static str, message: String, fix: Option<String>) {
        self.push(Status::Warning, topic, message, fix);
    }
    /// A problem when `needed` (the mode in use depends on it), else a warning.
    fn need(&mut self, needed: bool, topic: &'static str, message: String, fix: String) {
        let status = if needed {
            Status::Problem
        } else {
            Status::Warning
        };
        self.push(status, topic, message, Some(fix));
    }
}

/// The `rules apply` command line for the configuration the user gave, so
/// a suggested fix can be pasted as it is.
pub fn apply_command(source: &Source) -> String {
    let mut cmd = String::from("sudo lowport");
    if let Some(file) = &source.file {
        if file.as_path() != std::path::Path::new(crate::config::DEFAULT_CONFIG) {
            cmd.push_str(" -c ");
            cmd.push_str(&shell_quote(&file.display().to_string()));
        }
    }
    for spec in &source.specs {
        cmd.push_str(" -m ");
        cmd.push_str(&shell_quote(spec));
    }
    cmd.push_str(" rules apply");
    cmd
}

/// Quote `s` for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:=@,+".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Diagnose this host for `config`, read from `source` (named in the first
/// line, and in the commands suggested as fixes).
pub fn run(config: &Config, plan: &RulePlan, source: &Source) -> Report {
    let origin = source
        .effective_file()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "-m mappings".to_owned());
    let apply = apply_command(source);
    let mut f = Findings(Vec::new());
    f.ok(
        "config",
        format!("{origin}: {} mapping(s), valid", config.mappings.len()),
    );
    for w in &plan.warnings {
        f.warn("config", w.clone(), None);
    }

    let sockets = Listeners::read();
    let lowport_bin = std::env::current_exe().ok();

    // Which mode is in use?
    let choice = match config.rules.backend {
        BackendChoice::Auto => firewall::auto_choice(),
        other => (other, "set in the config".to_owned()),
    };
    let (installed, backend_name) = match firewall::select_backend(choice.0) {
        Ok(mut backend) => {
            let name = backend.name();
            match backend.list() {
                Ok(rules) => (rules, name.to_owned()),
                Err(e) => {
                    f.warn(
                        "rules",
                        format!("cannot read lowport's rules with {name}: {e}"),
                        Some("run lowport check as root".into()),
                    );
                    (None, name.to_owned())
                }
            }
        }
        Err(e) => {
            f.warn(
                "rules",
                format!("backend {} is not usable here: {e}", choice.0),
                None,
            );
            (None, choice.0.to_string())
        }
    };
    check_state(&mut f, &apply);
    let proxy_pids: Vec<&Socket> = sockets
        .all
        .iter()
        .filter(|s| {
            config
                .mappings
                .iter()
                .any(|m| m.listen.port.get() == s.addr.port())
                && s.processes.iter().any(|p| p.comm == "lowport")
        })
        .collect();
    let mode = if installed.is_some() {
        Mode::Rules
    } else if !proxy_pids.is_empty() {
        Mode::Proxy
    } else {
        Mode::None
    };

    // Per mapping: does something listen on the target, and as whom?
    for m in &config.mappings {
        check_target(&mut f, m, &sockets);
    }

    // Rules mode.
    let rules_needed = mode == Mode::Rules;
    let lowport_prio = if choice.0 == BackendChoice::Iptables {
        IPTABLES_NAT_PRIORITY
    } else {
        i64::from(NAT_PRIORITY)
    };
    match (&installed, mode) {
        (Some(rules), _) if rules == &plan.rules => f.ok(
            "rules",
            format!("lowport's rules are installed ({backend_name}, {}) and match the config", choice.1),
        ),
        (Some(_), _) => f.push(
            Status::Problem,
            "rules",
            format!("the installed rules ({backend_name}) differ from what the config would install (drift)"),
            Some(apply.clone()),
        ),
        (None, Mode::Proxy) => f.ok("rules", "not installed (proxy mode is in use)".into()),
        (None, _) => f.push(
            Status::Problem,
            "rules",
            format!("lowport's rules are not installed ({backend_name} would be used: {})", choice.1),
            Some(format!("{apply}  (or run `lowport proxy`)")),
        ),
    }
    for &s in &plan.sysctls {
        check_sysctl(&mut f, s, config, rules_needed, &apply);
    }
    check_loopback_exposure(&mut f, plan, installed.as_ref(), &apply);
    let ruleset = nft_ruleset();
    check_input_filters(&mut f, config, ruleset.as_ref(), rules_needed);
    check_nat_conflicts(&mut f, config, ruleset.as_ref(), lowport_prio);

    // Proxy mode.
    let port_start = read_u32("/proc/sys/net/ipv4/ip_unprivileged_port_start");
    let min_port = config
        .mappings
        .iter()
        .map(|m| u32::from(m.listen.port.get()))
        .min()
        .unwrap_or(0);
    let unprivileged_ok = port_start.is_some_and(|p| p <= min_port);
    match port_start {
        Some(p) if unprivileged_ok => f.ok(
            "proxy",
            format!("net.ipv4.ip_unprivileged_port_start={p} ≤ {min_port}: any user may bind the listen ports; no capability, no rules needed — the web server could listen there itself"),
        ),
        Some(p) => f.ok(
            "proxy",
            format!("net.ipv4.ip_unprivileged_port_start={p} > {min_port}: binding the listen ports needs cap_net_bind_service"),
        ),
        None => f.warn("proxy", "cannot read net.ipv4.ip_unprivileged_port_start".into(), None),
    }
    for s in &proxy_pids {
        f.ok(
            "proxy",
            format!(
                "lowport proxy listens on {} {} ({})",
                s.l4,
                s.addr,
                s.owner()
            ),
        );
    }
    let cap_ok = match &lowport_bin {
        Some(bin) if !unprivileged_ok => check_capability(&mut f, bin),
        _ => true,
    };
    if let Some(bin) = &lowport_bin {
        if !unprivileged_ok {
            check_nosuid(&mut f, bin);
        }
    }
    check_no_new_privs(&mut f, unprivileged_ok);

    let problems = f.0.iter().any(|x| x.status == Status::Problem);
    let recommendation = recommend(
        config,
        mode,
        &f.0,
        unprivileged_ok,
        cap_ok,
        &backend_name,
        &apply,
    );
    Report {
        ok: !problems,
        mode,
        findings: f.0,
        recommendation,
    }
}

fn recommend(
    config: &Config,
    mode: Mode,
    findings: &[Finding],
    unprivileged_ok: bool,
    cap_ok: bool,
    backend: &str,
    apply: &str,
) -> String {
    let ports: Vec<String> = {
        let mut p: Vec<u16> = config
            .mappings
            .iter()
            .map(|m| m.listen.port.get())
            .collect();
        p.sort();
        p.dedup();
        p.iter().map(u16::to_string).collect()
    };
    let ports = ports.join(",");
    let blocked = |topic: &str| {
        findings
            .iter()
            .any(|x| x.topic == topic && x.status != Status::Ok && x.fix.is_some())
    };
    if unprivileged_ok {
        return format!(
            "simplest here: let the web server listen on {ports} itself — unprivileged users may already bind them"
        );
    }
    if config
        .mappings
        .iter()
        .any(|m| m.proxy_protocol != ProxyProtocol::Off)
    {
        let cap = if cap_ok {
            ""
        } else {
            "sudo setcap cap_net_bind_service=+ep $(command -v lowport); "
        };
        return format!("simplest here: {cap}lowport proxy — a PROXY protocol header needs the proxy; kernel NAT cannot add one");
    }
    if blocked("nat")
        && findings
            .iter()
            .any(|x| x.topic == "nat" && x.status == Status::Problem)
    {
        return format!("simplest here: first remove the other NAT rule that claims the port (see ✗ nat above); then {apply}");
    }
    match mode {
        Mode::Rules if !findings.iter().any(|x| x.status == Status::Problem) => format!(
            "simplest here: keep rules mode ({backend}); enable lowport-rules.service so the rules come back after a reboot or an nftables reload"
        ),
        Mode::Proxy => "simplest here: keep the proxy; it holds no capability once its ports are bound".into(),
        _ => {
            let extra = if blocked("input") { ", and allow the translated ports in the input firewall (see ✗ input above)" } else { "" };
            format!("simplest here: {apply} ({backend}) — one-shot kernel NAT, nothing keeps running{extra}")
        }
    }
}

fn read_u32(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

// ---------------------------------------------------------------- listeners

/// A process holding a socket.
#[derive(Debug, Clone)]
struct Process {
    pid: u32,
    comm: String,
}

/// A listening TCP socket or a bound UDP socket of this network namespace.
#[derive(Debug, Clone)]
struct Socket {
    l4: L4,
    addr: SocketAddr,
    uid: u32,
    processes: Vec<Process>,
}

impl Socket {
    fn owner(&self) -> String {
        let who = user_name(self.uid).unwrap_or_else(|| format!("uid {}", self.uid));
        match self.processes.first() {
            Some(p) => format!("{} (pid {}) as {who}", p.comm, p.pid),
            None => format!("as {who}"),
        }
    }
}

struct Listeners {
    all: Vec<Socket>,
}

impl Listeners {
    fn read() -> Listeners {
        let mut all = Vec::new();
        for (file, l4, state) in [
            ("tcp", L4::Tcp, "0A"),
            ("tcp6", L4::Tcp, "0A"),
            ("udp", L4::Udp, "07"),
            ("udp6", L4::Udp, "07"),
        ] {
            let Ok(text) = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")) else {
                continue;
            };
            all.extend(parse_proc_net(&text, l4, state));
        }
        let owners = socket_owners(all.iter().map(|(_, ino)| *ino).collect());
        Listeners {
            all: all
                .into_iter()
                .map(|(mut s, ino)| {
                    s.processes = owners.get(&ino).cloned().unwrap_or_default();
                    s
                })
                .collect(),
        }
    }

    /// Sockets of `l4` on `port` that accept connections to `to`.
    fn serving(&self, l4: L4, port: u16, to: IpAddr) -> Vec<&Socket> {
        self.all
            .iter()
            .filter(|s| s.l4 == l4 && s.addr.port() == port && accepts(s.addr.ip(), to))
            .collect()
    }
}

/// Does a socket bound to `bound` accept a connection to `to`? A `[::]`
/// socket takes IPv4 too (unless bindv6only, which is rare).
fn accepts(bound: IpAddr, to: IpAddr) -> bool {
    match (bound, to) {
        (IpAddr::V6(b), _) if b.is_unspecified() => true,
        (IpAddr::V4(b), IpAddr::V4(_)) if b.is_unspecified() => true,
        (IpAddr::V6(b), IpAddr::V4(t)) => b.to_ipv4_mapped() == Some(t),
        (b, t) => b == t,
    }
}

/// Parse `/proc/net/tcp`-style text: sockets in `state`, with their inode.
fn parse_proc_net(text: &str, l4: L4, state: &str) -> Vec<(Socket, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&state) {
                return None;
            }
            let addr = parse_hex_addr(f.get(1)?)?;
            let uid = f.get(7)?.parse().ok()?;
            let inode = f.get(9)?.parse().ok()?;
            Some((
                Socket {
                    l4,
                    addr,
                    uid,
                    processes: Vec::new(),
                },
                inode,
            ))
        })
        .collect()
}

/// `0100007F:1F90` → 127.0.0.1:8080. The address is the kernel's bytes
/// printed as native-endian 32-bit words.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::with_capacity(16);
    for chunk in ip.as_bytes().chunks(8) {
        let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let arr: [u8; 16] = bytes.try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(arr))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Which processes hold each of `inodes`: `/proc/PID/fd/*` links read
/// `socket:[INODE]`. Processes we may not look into are skipped.
fn socket_owners(inodes: Vec<u64>) -> BTreeMap<u64, Vec<Process>> {
    let mut map: BTreeMap<u64, Vec<Process>> = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy();
            let Some(ino) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if inodes.contains(&ino) {
                let comm = std::fs::read_to_string(entry.path().join("comm"))
                    .map(|c| c.trim().to_owned())
                    .unwrap_or_default();
                let list = map.entry(ino).or_default();
                if !list.iter().any(|p| p.pid == pid) {
                    list.push(Process { pid, comm });
                }
            }
        }
    }
    map
}

fn user_name(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f[0].to_owned())
    })
}

fn check_target(f: &mut Findings, m: &Mapping, sockets: &Listeners) {
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

/// route_localnet=1 lets packets to 127.0.0.0/8 arriving from the LAN be
/// routed to local services; lowport's guard drops them. With the guard
/// gone (a `flush ruleset`, an `iptables-restore`) and the sysctl still on,
/// a neighbour that routes 127.0.0.0/8 at this host reaches services bound
/// to 127.0.0.1 (the CVE-2020-8558 class).
fn check_loopback_exposure(
    f: &mut Findings,
    plan: &RulePlan,
    installed: Option<&firewall::plan::RuleSet>,
    apply: &str,
) {
    let on = firewall::sysctl::read(Sysctl::RouteLocalnet).ok() == Some(1);
    let guarded = installed.is_some_and(|r| r.loopback_guard);
    if !on || guarded {
        return;
    }
    let ours = plan.sysctls.contains(&Sysctl::RouteLocalnet);
    f.need(
        ours,
        "sysctl",
        format!(
            "{}=1 and lowport's loopback guard is not installed: hosts on the LAN that route              127.0.0.0/8 here reach services bound to 127.0.0.1",
            Sysctl::RouteLocalnet
        ),
        if ours {
            format!(
                "{apply} puts the guard back (or `sudo lowport rules remove` turns the sysctl off);                  run `lowport rules watch` (lowport-rules-watch.service) so that a firewall reload                  cannot remove the guard again"
            )
        } else {
            format!(
                "sudo sysctl -w {}=0, unless something on this host needs it",
                Sysctl::RouteLocalnet
            )
        },
    );
}

/// lowport's own state: an apply or remove that never finished (killed,
/// power lost) may have left part of the old and part of the new rules.
fn check_state(f: &mut Findings, apply: &str) {
    let dir = firewall::ledger::state_dir();
    match firewall::ledger::Ledger::peek(&dir) {
        Ok(Some(snap)) => {
            if let Some(op) = snap.pending {
                f.push(
                    Status::Problem,
                    "state",
                    format!("an earlier `lowport {op}` was interrupted; the rules and sysctls may be half changed"),
                    Some(format!("{apply} again (or `lowport rules remove`)")),
                );
            }
        }
        Ok(None) => {}
        Err(e) => f.push(Status::Problem, "state", format!("{e}"), None),
    }
}

fn check_sysctl(f: &mut Findings, s: Sysctl, config: &Config, needed: bool, apply: &str) {
    let value = firewall::sysctl::read(s).ok();
    let why = match s {
        Sysctl::RouteLocalnet => "so remote clients can be sent to 127.0.0.1",
        _ => "to forward to a remote target",
    };
    match value {
        Some(1) => f.ok("sysctl", format!("{s}=1 ({why})")),
        _ if s.is_forwarding() && !config.rules.enable_forwarding => f.need(
            needed,
            "sysctl",
            format!("{s} is off; it is needed {why}, and the config does not let lowport turn it on"),
            format!("sudo sysctl -w {s}=1 (and a file in /etc/sysctl.d/), or `rules: {{enable_forwarding: true}}`"),
        ),
        _ => f.need(
            needed,
            "sysctl",
            format!("{s} is off; it is needed {why}"),
            format!("{apply} (sets it, and puts it back on remove)"),
        ),
    }
}

// ------------------------------------------------------- other firewalls

fn nft_ruleset() -> Option<Value> {
    let out = Command::new(firewall::system_program("nft"))
        .args(["-j", "list", "ruleset"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Three-valued result of matching a rule against a packet we only partly
/// know (no addresses, no interface but "not lo").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

/// The packet a firewall sees for one mapping.
#[derive(Debug, Clone, Copy)]
struct Packet {
    l4: L4,
    /// Destination port as the filter sees it (translated).
    dport: u16,
    /// Destination port the client sent to.
    orig_dport: u16,
}

fn value_has_port(v: &Value, port: u16) -> Option<bool> {
    match v {
        Value::Number(n) => Some(n.as_u64() == Some(u64::from(port))),
        Value::Object(o) => {
            if let Some(set) = o.get("set") {
                let items = set.as_array()?;
                let mut any = false;
                for i in items {
                    any |= value_has_port(i, port)?;
                }
                Some(any)
            } else if let Some(r) = o.get("range") {
                let r = r.as_array()?;
                let (lo, hi) = (r.first()?.as_u64()?, r.get(1)?.as_u64()?);
                Some((lo..=hi).contains(&u64::from(port)))
            } else {
                None
            }
        }
        Value::Array(items) => {
            let mut any = false;
            for i in items {
                any |= value_has_port(i, port)?;
            }
            Some(any)
        }
        _ => None,
    }
}

fn value_has_str(v: &Value, s: &str) -> Option<bool> {
    match v {
        Value::String(x) => Some(x == s),
        Value::Array(items) => Some(items.iter().any(|i| i.as_str() == Some(s))),
        Value::Object(o) => o.get("set").and_then(|x| value_has_str(x, s)),
        _ => None,
    }
}

/// Match one nft JSON `match` expression against the packet.
fn nft_match(m: &Value, p: &Packet) -> Tri {
    let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
    let (Some(left), Some(right)) = (m.get("left"), m.get("right")) else {
        return Tri::Maybe;
    };
    let hit: Option<bool> = if let Some(pl) = left.get("payload") {
        let proto = pl.get("protocol").and_then(Value::as_str).unwrap_or("");
        let field = pl.get("field").and_then(Value::as_str).unwrap_or("");
        let proto_ok = match proto {
            "tcp" => p.l4 == L4::Tcp,
            "udp" => p.l4 == L4::Udp,
            "th" => true,
            _ => return Tri::Maybe,
        };
        if !proto_ok {
            // `tcp dport 80` never matches a UDP packet, whatever the op.
            return Tri::No;
        }
        match field {
            "dport" => value_has_port(right, p.dport),
            _ => None,
        }
    } else if let Some(meta) = left.get("meta") {
        match meta.get("key").and_then(Value::as_str) {
            Some("l4proto") => value_has_str(right, &p.l4.to_string()),
            Some("iifname" | "iif") => {
                // The client is not on lo; any other interface may be it.
                if value_has_str(right, "lo") == Some(true) {
                    Some(false)
                } else {
                    None
                }
            }
            _ => None,
        }
    } else if let Some(ct) = left.get("ct") {
        match (
            ct.get("key").and_then(Value::as_str),
            ct.get("dir").and_then(Value::as_str),
        ) {
            (Some("proto-dst"), Some("original")) => value_has_port(right, p.orig_dport),
            (Some("state"), _) => value_has_str(right, "new"),
            (Some("status"), _) => value_has_str(right, "dnat"),
            _ => None,
        }
    } else {
        None
    };
    match (hit, op) {
        (None, _) => Tri::Maybe,
        (Some(h), "!=") => {
            if h {
                Tri::No
            } else {
                Tri::Yes
            }
        }
        (Some(h), _) => {
            if h {
                Tri::Yes
            } else {
                Tri::No
            }
        }
    }
}

/// The verdict of a chain (and the chains it jumps to) for a packet:
/// `Some(true)` accepted, `Some(false)` dropped, `None` falls through.
/// A rule that only maybe matches may accept (benefit of the doubt) but is
/// never taken to drop.
fn nft_chain_verdict(
    rs: &NftRules,
    table: (&str, &str),
    chain: &str,
    p: &Packet,
    depth: u8,
) -> Option<bool> {
    if depth > 8 {
        return None;
    }
    for rule in rs.rules(table, chain) {
        let mut m = Tri::Yes;
        for e in rule {
            if let Some(mm) = e.get("match") {
                match nft_match(mm, p) {
                    Tri::No => {
                        m = Tri::No;
                        break;
                    }
                    Tri::Maybe => m = Tri::Maybe,
                    Tri::Yes => {}
                }
            } else if e
                .get("xt")
                .is_some_and(|x| x.get("type").and_then(Value::as_str) == Some("match"))
            {
                m = Tri::Maybe;
            }
        }
        if m == Tri::No {
            continue;
        }
        for e in rule {
            if e.get("accept").is_some() {
                return Some(true);
            }
            if (e.get("drop").is_some() || e.get("reject").is_some()) && m == Tri::Yes {
                return Some(false);
            }
            if let Some(target) = e
                .get("jump")
                .or_else(|| e.get("goto"))
                .and_then(|j| j.get("target"))
                .and_then(Value::as_str)
            {
                let v = nft_chain_verdict(rs, table, target, p, depth + 1);
                if v == Some(true) || (v == Some(false) && m == Tri::Yes) {
                    return v;
                }
            }
        }
    }
    None
}

/// `nft -j list ruleset`, indexed.
struct NftRules<'a> {
    chains: Vec<&'a serde_json::Map<String, Value>>,
    rules: Vec<&'a serde_json::Map<String, Value>>,
}

impl<'a> NftRules<'a> {
    fn new(v: &'a Value) -> Self {
        let items = v.get("nftables").and_then(Value::as_array);
        let of = |kind: &str| -> Vec<&'a serde_json::Map<String, Value>> {
            items
                .into_iter()
                .flatten()
                .filter_map(|i| i.get(kind).and_then(Value::as_object))
                .collect()
        };
        NftRules {
            chains: of("chain"),
            rules: of("rule"),
        }
    }

    fn rules(&self, (family, table): (&str, &str), chain: &str) -> Vec<&'a Vec<Value>> {
        self.rules
            .iter()
            .filter(|r| {
                s(r, "family") == family && s(r, "table") == table && s(r, "chain") == chain
            })
            .filter_map(|r| r.get("expr").and_then(Value::as_array))
            .collect()
    }
}

fn s<'a>(o: &'a serde_json::Map<String, Value>, key: &str) -> &'a str {
    o.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The port the input firewall sees for a mapping, when the target is this host.
fn translated_port(m: &Mapping) -> Option<u16> {
    match &m.target.host {
        TargetHost::Local => Some(m.target.port.get()),
        TargetHost::Ip(ip)
            if ip.is_loopback()
                || firewall::plan::HostView::is_local(&firewall::SystemHost, *ip) =>
        {
            Some(m.target.port.get())
        }
        _ => None,
    }
}

fn check_input_filters(f: &mut Findings, config: &Config, ruleset: Option<&Value>, needed: bool) {
    let mut blocked_any = ruleset.is_some_and(|v| nft_input_blocks(f, config, v, needed));
    blocked_any |= check_legacy_input(f, config, needed);
    if !blocked_any {
        f.ok(
            "input",
            "no input firewall drops the translated ports".into(),
        );
    }
    if ruleset.is_none() {
        f.warn(
            "input",
            "cannot read the nftables ruleset (`nft -j list ruleset`); not checked".into(),
            Some("install nftables, run as root".into()),
        );
    }
}

/// The nftables input filter chains of `v` (`nft -j list ruleset`): one
/// finding per mapping whose translated port a chain drops; true if any.
fn nft_input_blocks(f: &mut Findings, config: &Config, v: &Value, needed: bool) -> bool {
    let mut blocked_any = false;
    let rs = NftRules::new(v);
    for chain in rs
        .chains
        .iter()
        .filter(|c| s(c, "hook") == "input" && s(c, "type") == "filter")
    {
        let (family, table, name) = (s(chain, "family"), s(chain, "table"), s(chain, "name"));
        let policy_drop = s(chain, "policy") == "drop";
        for m in &config.mappings {
            let Some(dport) = translated_port(m) else {
                continue;
            };
            for l4 in m.protocol.l4s() {
                for family_v4 in [true, false] {
                    let sees = match family {
                        "ip" => family_v4,
                        "ip6" => !family_v4,
                        "inet" => true,
                        _ => false,
                    };
                    if !sees {
                        continue;
                    }
                    let p = Packet {
                        l4,
                        dport,
                        orig_dport: m.listen.port.get(),
                    };
                    let verdict = nft_chain_verdict(&rs, (family, table), name, &p, 0);
                    let blocked = verdict == Some(false) || (verdict.is_none() && policy_drop);
                    if blocked {
                        blocked_any = true;
                        let listen = m.listen.port.get();
                        f.need(
                            needed,
                            "input",
                            format!(
                                "{}: chain {family} {table} {name} (hook input{}) drops {l4} to port {dport}: the input firewall sees the translated port {dport}, not {listen}",
                                m.label(),
                                if policy_drop { ", policy drop" } else { "" },
                            ),
                            format!("sudo nft insert rule {family} {table} {name} meta l4proto {l4} ct original proto-dst {listen} accept"),
                        );
                        break;
                    }
                }
            }
        }
    }
    blocked_any
}

/// Legacy iptables INPUT with a DROP policy: is the translated port accepted?
fn check_legacy_input(f: &mut Findings, config: &Config, needed: bool) -> bool {
    let mut blocked_any = false;
    for family in [plan::Family::V4, plan::Family::V6] {
        if !iptables::legacy_table_loaded(family, "filter") {
            continue;
        }
        let Ok(text) = iptables::save(iptables::IptablesFlavor::Legacy, family, "filter") else {
            continue;
        };
        if !text.lines().any(|l| l.starts_with(":INPUT DROP")) {
            continue;
        }
        for m in &config.mappings {
            let Some(dport) = translated_port(m) else {
                continue;
            };
            for l4 in m.protocol.l4s() {
                let accepted = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("-A INPUT "))
                    .any(|r| {
                        let words: Vec<&str> = r.split_whitespace().collect();
                        let has =
                            |a: &str, b: &str| words.windows(2).any(|w| w[0] == a && w[1] == b);
                        let proto_ok = !words.contains(&"-p") || has("-p", &l4.to_string());
                        let port_ok = has("--dport", &dport.to_string())
                            || has("--ctorigdstport", &m.listen.port.to_string())
                            || !words.iter().any(|w| {
                                w.starts_with("--dport")
                                    || w.starts_with("--ctorigdstport")
                                    || *w == "--ctstate"
                                    || *w == "--state"
                                    || *w == "-i"
                            });
                        proto_ok && port_ok && has("-j", "ACCEPT")
                    });
                if !accepted {
                    blocked_any = true;
                    let tool = if family == plan::Family::V4 {
                        "iptables-legacy"
                    } else {
                        "ip6tables-legacy"
                    };
                    f.need(
                        needed,
                        "input",
                        format!("{}: legacy {tool} INPUT has policy DROP and no rule accepts {l4} port {dport} (the firewall sees the translated port, not {})", m.label(), m.listen.port),
                        format!("sudo {tool} -I INPUT -p {l4} -m conntrack --ctstate DNAT --ctorigdstport {} -j ACCEPT", m.listen.port),
                    );
                }
            }
        }
    }
    blocked_any
}

fn check_nat_conflicts(
    f: &mut Findings,
    config: &Config,
    ruleset: Option<&Value>,
    lowport_prio: i64,
) {
    let mut any = ruleset.is_some_and(|v| nft_nat_conflicts(f, config, v, lowport_prio));
    // Legacy iptables nat runs at -100 in its own kernel tables.
    for family in [plan::Family::V4, plan::Family::V6] {
        if !iptables::legacy_table_loaded(family, "nat") {
            continue;
        }
        let Ok(text) = iptables::save(iptables::IptablesFlavor::Legacy, family, "nat") else {
            continue;
        };
        for m in &config.mappings {
            let port = m.listen.port.to_string();
            for line in text
                .lines()
                .filter(|l| l.starts_with("-A ") && !l.contains("LOWPORT-"))
            {
                let words: Vec<&str> = line.split_whitespace().collect();
                let has = |a: &str, b: &str| words.windows(2).any(|w| w[0] == a && w[1] == b);
                if has("--dport", &port) && (has("-j", "DNAT") || has("-j", "REDIRECT")) {
                    any = true;
                    f.warn(
                        "nat",
                        format!(
                            "{}: a legacy iptables nat rule also translates port {port}: {line}",
                            m.label()
                        ),
                        Some("remove it if lowport is to serve this port".into()),
                    );
                }
            }
        }
    }
    if !any {
        f.ok("nat", "no other NAT table claims the listen ports".into());
    }
}

/// The nftables nat chains of `v` (`nft -j list ruleset`) other than
/// lowport's own: one finding per mapping whose listen port a chain also
/// translates, a problem when it runs first; true if any.
fn nft_nat_conflicts(f: &mut Findings, config: &Config, v: &Value, lowport_prio: i64) -> bool {
    let mut any = false;
    let rs = NftRules::new(v);
    for chain in rs
        .chains
        .iter()
        .filter(|c| s(c, "type") == "nat" && matches!(s(c, "hook"), "prerouting" | "output"))
    {
        let (family, table, name) = (s(chain, "family"), s(chain, "table"), s(chain, "name"));
        if family == "inet" && table == firewall::TABLE {
            continue;
        }
        let prio = chain.get("prio").and_then(Value::as_i64).unwrap_or(0);
        for m in &config.mappings {
            for l4 in m.protocol.l4s() {
                let p = Packet {
                    l4,
                    dport: m.listen.port.get(),
                    orig_dport: m.listen.port.get(),
                };
                let Some(handle) = nft_claims(&rs, (family, table), name, &p, 0) else {
                    continue;
                };
                any = true;
                let what = format!("{}: table {family} {table} chain {name} (priority {prio}) also translates {l4} port {}", m.label(), m.listen.port);
                // iptables puts lowport's jump first in the same `nat`
                // chain; otherwise an equal priority is an undefined order.
                let same_chain = lowport_prio == IPTABLES_NAT_PRIORITY
                    && matches!(family, "ip" | "ip6")
                    && table == "nat";
                if !same_chain && prio <= lowport_prio {
                    f.push(
                        Status::Problem,
                        "nat",
                        format!("{what}, and it runs before lowport's rules (priority {lowport_prio}), so it wins"),
                        Some(format!("remove that rule (sudo nft delete rule {family} {table} {handle}) or map a different port")),
                    );
                } else {
                    f.warn(
                        "nat",
                        format!("{what}; lowport's rules (priority {lowport_prio}) run first, so that mapping never sees these connections"),
                        None,
                    );
                }
            }
        }
    }
    any
}

/// Does this nat chain (or a chain it jumps to) translate the packet's
/// port? Returns `chain NAME handle N` of the rule that does.
fn nft_claims(
    rs: &NftRules,
    table: (&str, &str),
    chain: &str,
    p: &Packet,
    depth: u8,
) -> Option<String> {
    if depth > 8 || chain.starts_with("LOWPORT-") {
        return None;
    }
    for (i, rule) in rs.rules(table, chain).into_iter().enumerate() {
        let mut port_named = false;
        let mut no = false;
        for e in rule {
            if let Some(mm) = e.get("match") {
                let is_dport = mm
                    .get("left")
                    .and_then(|l| l.get("payload"))
                    .and_then(|pl| pl.get("field"))
                    .and_then(Value::as_str)
                    == Some("dport");
                match nft_match(mm, p) {
                    Tri::No => no = true,
                    Tri::Yes if is_dport => port_named = true,
                    _ => {}
                }
            }
        }
        if no {
            continue;
        }
        for e in rule {
            let nat = e.get("dnat").is_some()
                || e.get("redirect").is_some()
                || e.get("xt").is_some_and(|x| {
                    matches!(
                        x.get("name").and_then(Value::as_str),
                        Some("DNAT" | "REDIRECT")
                    )
                });
            if nat && port_named {
                let handle = rs
                    .rules
                    .iter()
                    .filter(|r| {
                        s(r, "family") == table.0
                            && s(r, "table") == table.1
                            && s(r, "chain") == chain
                    })
                    .nth(i)
                    .and_then(|r| r.get("handle"))
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                return Some(format!("{chain} handle {handle}"));
            }
            if let Some(target) = e
                .get("jump")
                .or_else(|| e.get("goto"))
                .and_then(|j| j.get("target"))
                .and_then(Value::as_str)
            {
                if let Some(found) = nft_claims(rs, table, target, p, depth + 1) {
                    return Some(found);
                }
            }
        }
    }
    None
}

// ------------------------------------------------------------ proxy mode

/// Read the file capability of `bin`; true when it has
/// cap_net_bind_service in its permitted and effective sets.
fn check_capability(f: &mut Findings, bin: &Path) -> bool {
    let fix = format!("sudo setcap cap_net_bind_service=+ep {}", bin.display());
    match file_caps(bin) {
        Ok(Some(caps)) if caps.permitted & (1 << CAP_NET_BIND_SERVICE) != 0 && caps.effective => {
            f.ok(
                "proxy",
                format!("{} carries cap_net_bind_service=ep", bin.display()),
            );
            true
        }
        Ok(Some(_)) => {
            f.warn(
                "proxy",
                format!(
                    "{} has file capabilities, but not cap_net_bind_service=ep",
                    bin.display()
                ),
                Some(fix),
            );
            false
        }
        Ok(None) => {
            f.warn("proxy", format!("{} carries no file capability; `lowport proxy` as a normal user cannot bind the listen ports", bin.display()), Some(format!("{fix}  (or start it from systemd with AmbientCapabilities=CAP_NET_BIND_SERVICE, or by socket activation)")));
            false
        }
        Err(e) => {
            f.warn(
                "proxy",
                format!("cannot read the file capability of {}: {e}", bin.display()),
                None,
            );
            false
        }
    }
}

/// The parts of `struct vfs_cap_data` that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileCaps {
    permitted: u64,
    effective: bool,
}

/// `security.capability` of `path`, decoded; `None` when it has none.
fn file_caps(path: &Path) -> std::io::Result<Option<FileCaps>> {
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has a NUL byte")
    })?;
    let name = c"security.capability";
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and live for the call; the
    // buffer is writable for its full length, which is what we pass.
    let n = unsafe {
        libc::getxattr(
            cpath.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            _ => Err(e),
        };
    }
    let data = buf
        .get(..usize::try_from(n).unwrap_or(0))
        .unwrap_or_default();
    Ok(decode_vfs_caps(data))
}

/// `magic_etc` (revision | effective flag), then (permitted, inheritable)
/// pairs of 32-bit words, low word first; v3 adds a root uid.
fn decode_vfs_caps(data: &[u8]) -> Option<FileCaps> {
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            data.get(i * 4..i * 4 + 4)?.try_into().ok()?,
        ))
    };
    let magic = word(0)?;
    let effective = magic & 0x1 != 0;
    let revision = magic & 0xFF00_0000;
    let lo = u64::from(word(1)?);
    let hi = match revision {
        0x0100_0000 => 0,
        _ => u64::from(word(3).unwrap_or(0)),
    };
    Some(FileCaps {
        permitted: lo | hi << 32,
        effective,
    })
}

fn check_nosuid(f: &mut Findings, bin: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut best: Option<(usize, String, bool)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(mp), Some(opts)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let mp = mp.replace("\\040", " ");
        if bin.starts_with(&mp) && best.as_ref().is_none_or(|(len, _, _)| mp.len() >= *len) {
            best = Some((mp.len(), mp.clone(), opts.split(',').any(|o| o == "nosuid")));
        }
    }
    if let Some((_, mp, true)) = best {
        f.warn(
            "proxy",
            format!("{} is on {mp}, mounted nosuid: the kernel ignores its file capability", bin.display()),
            Some(format!("install lowport on a filesystem without nosuid (e.g. /usr/local/bin), or remount {mp} without nosuid")),
        );
    }
}

fn check_no_new_privs(f: &mut Findings, unprivileged_ok: bool) {
    if unprivileged_ok {
        return;
    }
    let nnp = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NoNewPrivs:").map(|v| v.trim() == "1"))
        })
        .unwrap_or(false);
    if nnp {
        f.warn(
            "proxy",
            "this process runs with no_new_privs: a lowport started the same way gets no file capability".into(),
            Some("under systemd, use AmbientCapabilities=CAP_NET_BIND_SERVICE (works with NoNewPrivileges=yes) instead of a file capability".into()),
        );
    }
    for dir in [
        "/etc/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("lowport") && name.ends_with(".service")) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let nnp = text.lines().any(|l| {
                let l = l.trim().replace(' ', "");
                l == "NoNewPrivileges=yes" || l == "NoNewPrivileges=true"
            });
            let ambient =
                text.contains("AmbientCapabilities=") && text.contains("CAP_NET_BIND_SERVICE");
            let path = PathBuf::from(dir).join(&name);
            if nnp && !ambient && text.contains("proxy") {
                f.warn(
                    "proxy",
                    format!("{} sets NoNewPrivileges=yes, which makes the kernel ignore lowport's file capability", path.display()),
                    Some("add AmbientCapabilities=CAP_NET_BIND_SERVICE to the unit".into()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggested_apply_names_what_the_user_gave() {
        let source = |file: Option<&str>, specs: &[&str]| Source {
            file: file.map(std::path::PathBuf::from),
            specs: specs.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            apply_command(&source(None, &[])),
            "sudo lowport rules apply"
        );
        assert_eq!(
            apply_command(&source(Some(crate::config::DEFAULT_CONFIG), &[])),
            "sudo lowport rules apply"
        );
        assert_eq!(
            apply_command(&source(Some("/srv/my conf/web.yaml"), &["80:8080", "[::]:443:[::1]:8443"])),
            "sudo lowport -c '/srv/my conf/web.yaml' -m 80:8080 -m '[::]:443:[::1]:8443' rules apply"
        );
        assert_eq!(
            apply_command(&source(None, &["it's"])),
            "sudo lowport -m 'it'\\''s' rules apply"
        );
    }

    #[test]
    fn proc_net_addresses_decode() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000    65534        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:0050 00000000:0000 01 00000000:00000000 00:00000000 00000000    0        0 12346 1\n";
        let got = parse_proc_net(text, L4::Tcp, "0A");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(got[0].0.uid, 65534);
        assert_eq!(got[0].1, 12345);
        let v6 = parse_hex_addr("00000000000000000000000001000000:1F90").unwrap();
        assert_eq!(v6, "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn vfs_caps_decode() {
        // setcap cap_net_bind_service=+ep: revision 2, effective, permitted bit 10.
        let mut v2 = Vec::new();
        for w in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
            v2.extend_from_slice(&w.to_le_bytes());
        }
        let c = decode_vfs_caps(&v2).unwrap();
        assert!(c.effective && c.permitted & (1 << CAP_NET_BIND_SERVICE) != 0);
        // cap_net_bind_service=+p: permitted only, not effective (the
        // effective flag is bit 0 of the magic word alone).
        let mut p_only = Vec::new();
        for w in [0x0200_0000u32, 1 << 10, 0, 0, 0] {
            p_only.extend_from_slice(&w.to_le_bytes());
        }
        let c = decode_vfs_caps(&p_only).unwrap();
        assert!(!c.effective, "+p counted as effective");
        assert_eq!(c.permitted, 1 << CAP_NET_BIND_SERVICE);
        // Revision 2 keeps the high 32 capabilities in word 3; revision 1
        // has none.
        let mut high = Vec::new();
        for w in [0x0200_0001u32, 0, 0, 1, 0] {
            high.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(decode_vfs_caps(&high).unwrap().permitted, 1 << 32);
        let mut v1 = Vec::new();
        for w in [0x0100_0001u32, 1 << 10, 0, 1, 0] {
            v1.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(decode_vfs_caps(&v1).unwrap().permitted, 1 << 10);
        assert!(decode_vfs_caps(&[1, 2, 3]).is_none(), "a short attribute");
    }

    #[test]
    fn nft_matches_ports_sets_and_ct_original() {
        let p = Packet {
            l4: L4::Tcp,
            dport: 8080,
            orig_dport: 80,
        };
        let m: Value = serde_json::json!({"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":{"set":[22,{"range":[8000,8100]}]}});
        assert_eq!(nft_match(&m, &p), Tri::Yes);
        let m: Value = serde_json::json!({"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":80});
        assert_eq!(nft_match(&m, &p), Tri::No, "the filter sees 8080, not 80");
        let m: Value = serde_json::json!({"op":"==","left":{"ct":{"key":"proto-dst","dir":"original"}},"right":80});
        assert_eq!(nft_match(&m, &p), Tri::Yes);
        let m: Value = serde_json::json!({"op":"in","left":{"ct":{"key":"state"}},"right":["established","related"]});
        assert_eq!(nft_match(&m, &p), Tri::No);
        let m: Value = serde_json::json!({"op":"==","left":{"payload":{"protocol":"udp","field":"dport"}},"right":8080});
        assert_eq!(nft_match(&m, &p), Tri::No);
    }

    // ------------------------------------------- rulesets as `nft -j` prints them

    use serde_json::json;

    /// A ruleset being built: tables, chains and rules in `nft -j list
    /// ruleset` form.
    #[derive(Default)]
    struct Nft {
        items: Vec<Value>,
        handle: u64,
    }

    impl Nft {
        /// A base chain: `type TYPE hook HOOK priority PRIO; policy POLICY;`.
        fn base(
            mut self,
            (family, table): (&str, &str),
            name: &str,
            (kind, hook, prio, policy): (&str, &str, i64, &str),
        ) -> Self {
            self.handle += 1;
            self.items.push(json!({"chain": {"family": family, "table": table, "name": name,
                "handle": self.handle, "type": kind, "hook": hook, "prio": prio, "policy": policy}}));
            self
        }
        /// A regular chain (a jump target).
        fn chain(mut self, (family, table): (&str, &str), name: &str) -> Self {
            self.handle += 1;
            self.items.push(
                json!({"chain": {"family": family, "table": table, "name": name,
                "handle": self.handle}}),
            );
            self
        }
        fn rule(mut self, (family, table): (&str, &str), chain: &str, expr: Vec<Value>) -> Self {
            self.handle += 1;
            self.items.push(
                json!({"rule": {"family": family, "table": table, "chain": chain,
                "handle": self.handle, "expr": expr}}),
            );
            self
        }
        fn json(self) -> Value {
            let mut items = vec![json!({"metainfo": {"json_schema_version": 1}})];
            items.extend(self.items);
            json!({ "nftables": items })
        }
    }

    const FILTER: (&str, &str) = ("inet", "filter");

    fn payload(proto: &str, field: &str, op: &str, right: Value) -> Value {
        json!({"match": {"op": op, "left": {"payload": {"protocol": proto, "field": field}}, "right": right}})
    }
    /// `tcp dport 8080` and the like.
    fn dport(proto: &str, right: Value) -> Value {
        payload(proto, "dport", "==", right)
    }
    /// `ct original proto-dst 80`.
    fn ct_orig_dport(port: u16) -> Value {
        json!({"match": {"op": "==", "left": {"ct": {"key": "proto-dst", "dir": "original"}}, "right": port}})
    }
    fn ct(key: &str, op: &str, right: Value) -> Value {
        json!({"match": {"op": op, "left": {"ct": {"key": key}}, "right": right}})
    }
    fn meta(key: &str, right: Value) -> Value {
        json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": right}})
    }
    fn verdict(v: &str) -> Value {
        json!({ v: null })
    }
    fn jump(kind: &str, target: &str) -> Value {
        json!({ kind: {"target": target} })
    }

    /// An `inet filter input` chain with `policy` and `rules`, plus the
    /// regular chains `extra` (name, rules) it may jump to.
    fn input(policy: &str, rules: Vec<Vec<Value>>, extra: Vec<(&str, Vec<Vec<Value>>)>) -> Value {
        let mut nft = Nft::default().base(FILTER, "input", ("filter", "input", 0, policy));
        for r in rules {
            nft = nft.rule(FILTER, "input", r);
        }
        for (name, rules) in extra {
            nft = nft.chain(FILTER, name);
            for r in rules {
                nft = nft.rule(FILTER, name, r);
            }
        }
        nft.json()
    }

    fn config(specs: &[&str]) -> Config {
        Config {
            mappings: specs
                .iter()
                .enumerate()
                .map(|(i, s)| crate::config::parse_spec(s, i).unwrap())
                .collect(),
            ..Config::default()
        }
    }

    /// The input findings for mappings `specs` under ruleset `nft` (the mode
    /// in use needs the rules when `needed`).
    fn input_findings(specs: &[&str], nft: &Value, needed: bool) -> Vec<Finding> {
        let mut f = Findings(Vec::new());
        let any = nft_input_blocks(&mut f, &config(specs), nft, needed);
        assert_eq!(any, !f.0.is_empty(), "the result says whether it found any");
        f.0
    }

    /// Does the input firewall `nft` drop the connections of mapping `spec`?
    fn blocked(spec: &str, nft: &Value) -> bool {
        !input_findings(&[spec], nft, true).is_empty()
    }

    #[test]
    fn input_policy_decides_when_no_rule_does() {
        let drop = input("drop", vec![], vec![]);
        let f = input_findings(&["80:8080"], &drop, true);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].status, Status::Problem);
        assert_eq!(f[0].topic, "input");
        assert!(
            f[0].message.starts_with(
                "#1: chain inet filter input (hook input, policy drop) drops tcp to port 8080"
            ),
            "{}",
            f[0].message
        );
        assert_eq!(
            f[0].fix.as_deref(),
            Some("sudo nft insert rule inet filter input meta l4proto tcp ct original proto-dst 80 accept")
        );
        // The other mode in use: only worth knowing.
        assert_eq!(
            input_findings(&["80:8080"], &drop, false)[0].status,
            Status::Warning
        );
        assert!(!blocked("80:8080", &input("accept", vec![], vec![])));
    }

    #[test]
    fn input_sees_the_translated_port() {
        let accepts = |e: Value| input("drop", vec![vec![e, verdict("accept")]], vec![]);
        assert!(!blocked("80:8080", &accepts(dport("tcp", json!(8080)))));
        // The trap: a rule for the listen port does not let the redirected
        // connections in, the filter sees 8080.
        assert!(blocked("80:8080", &accepts(dport("tcp", json!(80)))));
        assert!(blocked("80:8080", &accepts(dport("tcp", json!(22)))));
        // The port the client sent to, remembered by conntrack.
        assert!(!blocked("80:8080", &accepts(ct_orig_dport(80))));
        assert!(blocked("80:8080", &accepts(ct_orig_dport(8080))));
        // Sets, ranges, a list.
        assert!(!blocked(
            "80:8080",
            &accepts(dport("tcp", json!({"set": [22, 8080]})))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(dport("tcp", json!({"set": [8080, 22]})))
        ));
        assert!(blocked(
            "80:8080",
            &accepts(dport("tcp", json!({"set": [22, 443]})))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(dport("tcp", json!({"range": [8000, 8100]})))
        ));
        assert!(blocked(
            "80:8080",
            &accepts(dport("tcp", json!({"range": [8081, 8100]})))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(dport("tcp", json!([22, 8080])))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(dport("tcp", json!([8080, 22])))
        ));
        assert!(blocked("80:8080", &accepts(dport("tcp", json!([22, 443])))));
        // `!=`.
        assert!(blocked(
            "80:8080",
            &accepts(payload("tcp", "dport", "!=", json!(8080)))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(payload("tcp", "dport", "!=", json!(22)))
        ));
    }

    #[test]
    fn input_matches_the_protocol() {
        let accepts =
            |e: Vec<Value>| input("drop", vec![[e, vec![verdict("accept")]].concat()], vec![]);
        assert!(blocked(
            "80:8080/udp",
            &accepts(vec![dport("tcp", json!(8080))])
        ));
        assert!(!blocked(
            "80:8080/udp",
            &accepts(vec![dport("udp", json!(8080))])
        ));
        assert!(blocked(
            "80:8080",
            &accepts(vec![dport("udp", json!(8080))])
        ));
        // `tcp dport != 22` never matches UDP either.
        assert!(blocked(
            "80:8080/udp",
            &accepts(vec![payload("tcp", "dport", "!=", json!(22))])
        ));
        let th = vec![meta("l4proto", json!("udp")), dport("th", json!(8080))];
        assert!(!blocked("80:8080/udp", &accepts(th.clone())));
        assert!(blocked("80:8080", &accepts(th)));
        assert!(!blocked(
            "80:8080",
            &accepts(vec![meta("l4proto", json!({"set": ["tcp", "udp"]}))])
        ));
        assert!(blocked(
            "80:8080",
            &accepts(vec![meta("l4proto", json!(["udp", "icmp"]))])
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(vec![meta("l4proto", json!(["icmp", "tcp"]))])
        ));
        // Both protocols: each is checked, one finding each.
        let tcp_only = accepts(vec![dport("tcp", json!(8080))]);
        let f = input_findings(&["80:8080/both"], &tcp_only, true);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].message.contains("drops udp to port 8080"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn input_new_connections_and_interfaces() {
        let accepts = |e: Value| input("drop", vec![vec![e, verdict("accept")]], vec![]);
        // Established/related lets replies in, not the first packet.
        assert!(blocked(
            "80:8080",
            &accepts(ct("state", "in", json!(["established", "related"])))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(ct("state", "in", json!(["new", "established"])))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(ct("state", "==", json!("new")))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(ct("state", "==", json!({"set": ["new"]})))
        ));
        assert!(blocked(
            "80:8080",
            &accepts(ct("state", "==", json!("invalid")))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(ct("status", "==", json!("dnat")))
        ));
        assert!(blocked(
            "80:8080",
            &accepts(ct("status", "==", json!("snat")))
        ));
        // The client is not on lo; it may be on any other interface.
        assert!(blocked("80:8080", &accepts(meta("iifname", json!("lo")))));
        assert!(blocked("80:8080", &accepts(meta("iif", json!("lo")))));
        assert!(!blocked(
            "80:8080",
            &accepts(meta("iifname", json!("eth0")))
        ));
        assert!(!blocked(
            "80:8080",
            &accepts(meta("iifname", json!({"set": ["eth0", "wg0"]})))
        ));
        // What the check cannot know gets the benefit of the doubt: it may
        // accept, but it never drops.
        let saddr = payload(
            "ip",
            "saddr",
            "==",
            json!({"prefix": {"addr": "10.0.0.0", "len": 8}}),
        );
        assert!(!blocked("80:8080", &accepts(saddr.clone())));
        assert!(!blocked(
            "80:8080",
            &accepts(payload("tcp", "sport", "==", json!(1234)))
        ));
        let drops =
            |e: Vec<Value>, v: &str| input("accept", vec![[e, vec![verdict(v)]].concat()], vec![]);
        assert!(!blocked("80:8080", &drops(vec![saddr.clone()], "drop")));
        assert!(!blocked(
            "80:8080",
            &drops(vec![meta("iifname", json!("eth0"))], "drop")
        ));
        assert!(!blocked(
            "80:8080",
            &drops(vec![dport("tcp", json!(8080)), saddr], "drop")
        ));
        let xt_match = json!({"xt": {"type": "match", "name": "conntrack"}});
        assert!(!blocked("80:8080", &accepts(xt_match.clone())));
        assert!(!blocked("80:8080", &drops(vec![xt_match], "drop")));
        // An xt target is no condition: the rule still drops.
        let xt_target = json!({"xt": {"type": "target", "name": "LOG"}});
        assert!(blocked(
            "80:8080",
            &drops(vec![dport("tcp", json!(8080)), xt_target], "drop")
        ));
        // A match without both sides cannot be read.
        assert!(!blocked(
            "80:8080",
            &drops(
                vec![json!({"match": {"op": "==", "left": {"meta": {"key": "mark"}}}})],
                "drop"
            )
        ));
    }

    #[test]
    fn input_rules_apply_in_order() {
        let port = || dport("tcp", json!(8080));
        // An explicit drop or reject under an accept policy.
        for v in ["drop", "reject"] {
            let nft = input("accept", vec![vec![port(), verdict(v)]], vec![]);
            let f = input_findings(&["80:8080"], &nft, true);
            assert_eq!(f.len(), 1, "{v}: {f:?}");
            assert!(
                f[0].message.contains("(hook input) drops tcp to port 8080"),
                "no policy drop named: {}",
                f[0].message
            );
        }
        assert!(!blocked(
            "80:8080",
            &input(
                "accept",
                vec![vec![dport("tcp", json!(22)), verdict("drop")]],
                vec![]
            )
        ));
        // The first rule that decides wins.
        let drop_first = input(
            "accept",
            vec![
                vec![port(), verdict("drop")],
                vec![port(), verdict("accept")],
            ],
            vec![],
        );
        assert!(blocked("80:8080", &drop_first));
        let accept_first = input(
            "drop",
            vec![
                vec![port(), verdict("accept")],
                vec![port(), verdict("drop")],
            ],
            vec![],
        );
        assert!(!blocked("80:8080", &accept_first));
        // A rule that matches but has no verdict (a counter) falls through.
        let counter = input(
            "drop",
            vec![vec![port(), json!({"counter": {"packets": 0, "bytes": 0}})]],
            vec![],
        );
        assert!(blocked("80:8080", &counter));
    }

    #[test]
    fn input_follows_jumps() {
        let port = || dport("tcp", json!(8080));
        for kind in ["jump", "goto"] {
            let allow = input(
                "drop",
                vec![vec![jump(kind, "allow")]],
                vec![("allow", vec![vec![port(), verdict("accept")]])],
            );
            assert!(!blocked("80:8080", &allow), "{kind}");
            let deny = input(
                "accept",
                vec![vec![port(), jump(kind, "deny")]],
                vec![("deny", vec![vec![verdict("drop")]])],
            );
            assert!(blocked("80:8080", &deny), "{kind}");
        }
        // A chain that decides nothing returns to the policy.
        let nothing = |policy| {
            input(
                policy,
                vec![vec![jump("jump", "other")]],
                vec![(
                    "other",
                    vec![vec![dport("tcp", json!(22)), verdict("accept")]],
                )],
            )
        };
        assert!(blocked("80:8080", &nothing("drop")));
        assert!(!blocked("80:8080", &nothing("accept")));
        // ... and to the rules after the jump.
        let after = input(
            "drop",
            vec![vec![jump("jump", "other")], vec![port(), verdict("accept")]],
            vec![("other", vec![])],
        );
        assert!(!blocked("80:8080", &after));
        // A jump that only maybe applies may accept, but never drops.
        let maybe = |v: &str, policy| {
            input(
                policy,
                vec![vec![meta("iifname", json!("eth0")), jump("jump", "c")]],
                vec![("c", vec![vec![verdict(v)]])],
            )
        };
        assert!(!blocked("80:8080", &maybe("drop", "accept")));
        assert!(!blocked("80:8080", &maybe("accept", "drop")));
        // A jump that does not apply is not followed.
        let not_for_us = input(
            "accept",
            vec![vec![dport("tcp", json!(22)), jump("jump", "deny")]],
            vec![("deny", vec![vec![verdict("drop")]])],
        );
        assert!(!blocked("80:8080", &not_for_us));
        // Nested jumps are followed eight deep.
        let mut extra: Vec<(&str, Vec<Vec<Value>>)> = Vec::new();
        let names = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"];
        for (i, n) in names.iter().enumerate() {
            let rules = match names.get(i + 1) {
                Some(next) => vec![vec![jump("jump", next)]],
                None => vec![vec![port(), verdict("accept")]],
            };
            extra.push((n, rules));
        }
        assert!(!blocked(
            "80:8080",
            &input("drop", vec![vec![jump("jump", "c1")]], extra)
        ));
        // A loop ends (the kernel refuses one; a ruleset read half-way may show one).
        let looped = input(
            "drop",
            vec![vec![jump("jump", "a")]],
            vec![("a", vec![vec![jump("jump", "a")]])],
        );
        assert!(blocked("80:8080", &looped));
    }

    #[test]
    fn input_chains_that_see_the_packet() {
        let chain = |family: &str, hook: &str, kind: &str| {
            Nft::default()
                .base((family, "t"), "c", (kind, hook, 0, "drop"))
                .json()
        };
        for family in ["ip", "ip6", "inet"] {
            let f = input_findings(&["80:8080"], &chain(family, "input", "filter"), true);
            assert_eq!(
                f.len(),
                1,
                "{family}: one finding, not one per family: {f:?}"
            );
            assert!(
                f[0].message.contains(&format!("chain {family} t c ")),
                "{}",
                f[0].message
            );
        }
        assert!(!blocked("80:8080", &chain("arp", "input", "filter")));
        assert!(!blocked("80:8080", &chain("bridge", "input", "filter")));
        assert!(!blocked("80:8080", &chain("inet", "forward", "filter")));
        assert!(!blocked("80:8080", &chain("inet", "input", "nat")));
        // Rules belong to their own family, table and chain.
        let port = dport("tcp", json!(8080));
        for other in [("ip", "t", "c"), ("inet", "u", "c"), ("inet", "t", "d")] {
            let nft = Nft::default()
                .base(("inet", "t"), "c", ("filter", "input", 0, "drop"))
                .rule(
                    (other.0, other.1),
                    other.2,
                    vec![port.clone(), verdict("accept")],
                )
                .json();
            assert!(blocked("80:8080", &nft), "{other:?}");
        }
        // Two chains: both must let it through.
        let two = Nft::default()
            .base(FILTER, "input", ("filter", "input", 0, "accept"))
            .base(("ip", "other"), "in", ("filter", "input", 10, "drop"))
            .json();
        let f = input_findings(&["80:8080", "443:8443"], &two, true);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[1].message.starts_with("#2: chain ip other in "),
            "{}",
            f[1].message
        );
    }

    #[test]
    fn input_checks_only_targets_on_this_host() {
        let drop = input("drop", vec![], vec![]);
        assert!(blocked("80:127.0.0.1:8080", &drop));
        assert!(blocked("80:[::1]:8080", &drop));
        // Forwarded to another host: the input chain never sees it.
        assert!(!blocked("80:192.0.2.1:8080", &drop));
        assert!(!blocked("80:192.0.2.1:8080/udp", &drop));
        assert_eq!(
            translated_port(&config(&["80:8080"]).mappings[0]),
            Some(8080)
        );
        assert_eq!(
            translated_port(&config(&["80:127.0.0.1:8081"]).mappings[0]),
            Some(8081)
        );
        assert_eq!(
            translated_port(&config(&["80:192.0.2.1:8080"]).mappings[0]),
            None
        );
        assert_eq!(
            translated_port(&config(&["80:example.invalid:8080"]).mappings[0]),
            None
        );
        // Nothing to read: nothing found.
        assert!(input_findings(&["80:8080"], &json!({}), true).is_empty());
    }

    /// The NAT findings for mappings `specs` under ruleset `nft`, with
    /// lowport's chains at `lowport_prio`.
    fn nat_findings(specs: &[&str], nft: &Value, lowport_prio: i64) -> Vec<Finding> {
        let mut f = Findings(Vec::new());
        let any = nft_nat_conflicts(&mut f, &config(specs), nft, lowport_prio);
        assert_eq!(any, !f.0.is_empty(), "the result says whether it found any");
        f.0
    }

    fn dnat(port: u16) -> Value {
        json!({"dnat": {"addr": "10.0.0.1", "port": port}})
    }

    /// A `prerouting` nat chain `(family, table) svc` at `prio` with `rules`,
    /// plus the regular chains `extra`.
    fn nat(
        table: (&str, &str),
        prio: i64,
        rules: Vec<Vec<Value>>,
        extra: Vec<(&str, Vec<Vec<Value>>)>,
    ) -> Value {
        let mut nft = Nft::default().base(table, "svc", ("nat", "prerouting", prio, "accept"));
        for r in rules {
            nft = nft.rule(table, "svc", r);
        }
        for (name, rules) in extra {
            nft = nft.chain(table, name);
            for r in rules {
                nft = nft.rule(table, name, r);
            }
        }
        nft.json()
    }

    const EARLY: (&str, &str) = ("ip", "early");
    /// lowport's nftables priority, and iptables' (its chains sit in the
    /// `nat` tables' own chains).
    const NFT_PRIO: i64 = -105;
    const IPT_PRIO: i64 = -100;

    #[test]
    fn nat_chain_that_runs_first_wins() {
        let rule = || vec![dport("tcp", json!(80)), dnat(8080)];
        let f = nat_findings(
            &["80:8080"],
            &nat(EARLY, -110, vec![rule()], vec![]),
            NFT_PRIO,
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].status, f[0].topic), (Status::Problem, "nat"));
        assert_eq!(
            f[0].message,
            "#1: table ip early chain svc (priority -110) also translates tcp port 80, and it runs before lowport's rules (priority -105), so it wins"
        );
        // The handle is the rule's own (the chain's is 1).
        assert_eq!(
            f[0].fix.as_deref(),
            Some("remove that rule (sudo nft delete rule ip early svc handle 2) or map a different port")
        );
        // An equal priority is an undefined order: a problem too.
        let f = nat_findings(
            &["80:8080"],
            &nat(EARLY, -105, vec![rule()], vec![]),
            NFT_PRIO,
        );
        assert_eq!(f[0].status, Status::Problem, "{f:?}");
        let f = nat_findings(
            &["80:8080"],
            &nat(EARLY, -100, vec![rule()], vec![]),
            NFT_PRIO,
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].status, f[0].fix.as_ref()), (Status::Warning, None));
        assert_eq!(
            f[0].message,
            "#1: table ip early chain svc (priority -100) also translates tcp port 80; lowport's rules (priority -105) run first, so that mapping never sees these connections"
        );
    }

    #[test]
    fn nat_iptables_puts_its_jump_first_in_the_nat_table() {
        let rule = || vec![vec![dport("tcp", json!(80)), dnat(8080)]];
        let status = |table, prio, lowport| {
            let f = nat_findings(&["80:8080"], &nat(table, prio, rule(), vec![]), lowport);
            assert_eq!(f.len(), 1, "{f:?}");
            f[0].status
        };
        // iptables-nft's own `nat` tables hold lowport's jump, first.
        assert_eq!(status(("ip", "nat"), -100, IPT_PRIO), Status::Warning);
        assert_eq!(status(("ip6", "nat"), -100, IPT_PRIO), Status::Warning);
        assert_eq!(status(("ip", "nat"), -110, IPT_PRIO), Status::Warning);
        // Any other table at that priority is an undefined order.
        assert_eq!(status(("inet", "nat"), -100, IPT_PRIO), Status::Problem);
        assert_eq!(status(("ip", "other"), -100, IPT_PRIO), Status::Problem);
        // With nftables, an `ip nat` table is just another table.
        assert_eq!(status(("ip", "nat"), -105, NFT_PRIO), Status::Problem);
        assert_eq!(status(("ip", "nat"), -104, NFT_PRIO), Status::Warning);
    }

    #[test]
    fn nat_chains_and_rules_that_claim_the_port() {
        let claims = |spec: &str, nft: &Value| !nat_findings(&[spec], nft, NFT_PRIO).is_empty();
        let one = |rule: Vec<Value>| nat(EARLY, -110, vec![rule], vec![]);
        assert!(claims(
            "80:8080",
            &one(vec![dport("tcp", json!(80)), dnat(8080)])
        ));
        assert!(claims(
            "80:8080",
            &one(vec![
                dport("tcp", json!({"set": [80, 443]})),
                json!({"redirect": {"port": 8080}})
            ])
        ));
        for target in ["DNAT", "REDIRECT"] {
            let xt = json!({"xt": {"type": "target", "name": target}});
            assert!(
                claims("80:8080", &one(vec![dport("tcp", json!(80)), xt])),
                "{target}"
            );
        }
        let masq = json!({"xt": {"type": "target", "name": "MASQUERADE"}});
        assert!(!claims(
            "80:8080",
            &one(vec![dport("tcp", json!(80)), masq])
        ));
        assert!(!claims(
            "80:8080",
            &one(vec![dport("tcp", json!(80)), verdict("accept")])
        ));
        // Another port, another protocol.
        assert!(!claims(
            "80:8080",
            &one(vec![dport("tcp", json!(443)), dnat(8080)])
        ));
        assert!(!claims(
            "80:8080/udp",
            &one(vec![dport("tcp", json!(80)), dnat(8080)])
        ));
        assert!(claims(
            "80:8080/udp",
            &one(vec![dport("udp", json!(80)), dnat(8080)])
        ));
        // A rule that names no port is not taken to claim this one.
        assert!(!claims(
            "80:8080",
            &one(vec![meta("l4proto", json!("tcp")), dnat(8080)])
        ));
        assert!(!claims(
            "80:8080",
            &one(vec![ct("state", "==", json!("new")), dnat(8080)])
        ));
        assert!(!claims("80:8080", &one(vec![dnat(8080)])));
        // Nor one with a condition that rules the packet out.
        assert!(!claims(
            "80:8080",
            &one(vec![
                meta("iifname", json!("lo")),
                dport("tcp", json!(80)),
                dnat(8080)
            ])
        ));
        assert!(claims(
            "80:8080",
            &one(vec![
                meta("iifname", json!("eth0")),
                dport("tcp", json!(80)),
                dnat(8080)
            ])
        ));
        // Output and prerouting nat chains count; others do not.
        for (kind, hook, counts) in [
            ("nat", "output", true),
            ("nat", "postrouting", false),
            ("nat", "input", false),
            ("filter", "prerouting", false),
        ] {
            let nft = Nft::default()
                .base(EARLY, "c", (kind, hook, -110, "accept"))
                .rule(EARLY, "c", vec![dport("tcp", json!(80)), dnat(8080)])
                .json();
            assert_eq!(claims("80:8080", &nft), counts, "{kind} {hook}");
        }
        // lowport's own table is not a conflict; a table of that name in
        // another family is.
        let rule = || vec![vec![dport("tcp", json!(80)), dnat(8080)]];
        assert!(!claims(
            "80:8080",
            &nat(("inet", "lowport"), -105, rule(), vec![])
        ));
        assert!(claims(
            "80:8080",
            &nat(("ip", "lowport"), -105, rule(), vec![])
        ));
        assert!(claims(
            "80:8080",
            &nat(("inet", "other"), -105, rule(), vec![])
        ));
    }

    #[test]
    fn nat_follows_jumps_and_names_the_rule() {
        // The handle of the rule that translates, in the chain it is in,
        // with rules of other chains and tables listed in between.
        let nft = Nft::default()
            .base(EARLY, "svc", ("nat", "prerouting", -110, "accept"))
            .chain(EARLY, "web")
            .rule(EARLY, "svc", vec![dport("tcp", json!(22)), dnat(2222)])
            .rule(EARLY, "svc", vec![jump("jump", "web")])
            .rule(EARLY, "web", vec![dport("tcp", json!(443)), dnat(8443)])
            .rule(
                ("ip6", "early"),
                "web",
                vec![dport("tcp", json!(80)), dnat(8080)],
            )
            .rule(
                ("ip", "late"),
                "web",
                vec![dport("tcp", json!(80)), dnat(8080)],
            )
            .rule(EARLY, "other", vec![dport("tcp", json!(80)), dnat(8080)])
            .rule(EARLY, "web", vec![dport("tcp", json!(80)), dnat(8080)])
            .json();
        let f = nat_findings(&["80:8080"], &nft, NFT_PRIO);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(
            f[0].fix.as_deref(),
            Some("remove that rule (sudo nft delete rule ip early web handle 9) or map a different port")
        );
        assert!(
            f[0].message.contains("chain svc (priority -110)"),
            "{}",
            f[0].message
        );
        // goto too; a jump that cannot apply is not followed.
        let via = |kind: &str, cond: Vec<Value>| {
            nat(
                EARLY,
                -110,
                vec![[cond, vec![jump(kind, "web")]].concat()],
                vec![("web", vec![vec![dport("tcp", json!(80)), dnat(8080)]])],
            )
        };
        assert_eq!(
            nat_findings(&["80:8080"], &via("goto", vec![]), NFT_PRIO).len(),
            1
        );
        assert!(nat_findings(
            &["80:8080"],
            &via("jump", vec![dport("tcp", json!(22))]),
            NFT_PRIO
        )
        .is_empty());
        // lowport's own chains (iptables) are not a conflict.
        let ours = nat(
            ("ip", "nat"),
            -100,
            vec![vec![jump("jump", "LOWPORT-PRE")]],
            vec![(
                "LOWPORT-PRE",
                vec![vec![dport("tcp", json!(80)), dnat(8080)]],
            )],
        );
        assert!(nat_findings(&["80:8080"], &ours, IPT_PRIO).is_empty());
        // Eight deep is followed; a loop ends.
        let mut extra: Vec<(&str, Vec<Vec<Value>>)> = Vec::new();
        let names = ["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"];
        for (i, n) in names.iter().enumerate() {
            let rules = match names.get(i + 1) {
                Some(next) => vec![vec![jump("jump", next)]],
                None => vec![vec![dport("tcp", json!(80)), dnat(8080)]],
            };
            extra.push((n, rules));
        }
        let deep = nat(EARLY, -110, vec![vec![jump("jump", "c1")]], extra);
        assert_eq!(nat_findings(&["80:8080"], &deep, NFT_PRIO).len(), 1);
        let looped = nat(
            EARLY,
            -110,
            vec![vec![jump("jump", "a")]],
            vec![("a", vec![vec![jump("jump", "a")]])],
        );
        assert!(nat_findings(&["80:8080"], &looped, NFT_PRIO).is_empty());
        // Every mapping and protocol is asked about.
        let both = nat(
            EARLY,
            -110,
            vec![vec![dport("th", json!(80)), dnat(8080)]],
            vec![],
        );
        let f = nat_findings(&["443:8443", "80:8080/both"], &both, NFT_PRIO);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].message.starts_with("#2: ") && f[0].message.contains("translates tcp port 80")
        );
        assert!(
            f[1].message.contains("translates udp port 80"),
            "{}",
            f[1].message
        );
    }

    fn finding(status: Status, topic: &'static str, fix: Option<&str>) -> Finding {
        Finding {
            status,
            topic,
            message: "m".into(),
            fix: fix.map(str::to_owned),
        }
    }

    const APPLY: &str = "sudo lowport rules apply";

    fn recommend_for(
        specs: &[&str],
        mode: Mode,
        findings: &[Finding],
        unprivileged_ok: bool,
        cap_ok: bool,
    ) -> String {
        recommend(
            &config(specs),
            mode,
            findings,
            unprivileged_ok,
            cap_ok,
            "nftables",
            APPLY,
        )
    }

    #[test]
    fn recommendation_follows_the_host() {
        // Unprivileged ports: nothing needed at all, whatever else is found.
        let problem = [finding(Status::Problem, "rules", Some(APPLY))];
        assert_eq!(
            recommend_for(&["443:8443", "80:8080", "80:8081/udp"], Mode::Rules, &problem, true, false),
            "simplest here: let the web server listen on 80,443 itself — unprivileged users may already bind them"
        );
        // A PROXY protocol header needs the proxy, and the proxy the capability.
        let mut cfg = config(&["80:8080"]);
        cfg.mappings[0].proxy_protocol = ProxyProtocol::V1;
        let pp = |cap_ok| recommend(&cfg, Mode::Rules, &[], false, cap_ok, "nftables", APPLY);
        assert_eq!(
            pp(true),
            "simplest here: lowport proxy — a PROXY protocol header needs the proxy; kernel NAT cannot add one"
        );
        assert_eq!(
            pp(false),
            "simplest here: sudo setcap cap_net_bind_service=+ep $(command -v lowport); lowport proxy — a PROXY protocol header needs the proxy; kernel NAT cannot add one"
        );
        // Rules mode, all well: keep it.
        let ok = [finding(Status::Ok, "rules", None)];
        let keep = "simplest here: keep rules mode (nftables); enable lowport-rules.service so the rules come back after a reboot or an nftables reload";
        assert_eq!(
            recommend_for(&["80:8080"], Mode::Rules, &ok, false, true),
            keep
        );
        let warned = [
            finding(Status::Warning, "nat", Some("x")),
            finding(Status::Warning, "input", Some("y")),
        ];
        assert_eq!(
            recommend_for(&["80:8080"], Mode::Rules, &warned, false, true),
            keep
        );
        // Proxy mode: keep it.
        assert_eq!(
            recommend_for(&["80:8080"], Mode::Proxy, &problem, false, false),
            "simplest here: keep the proxy; it holds no capability once its ports are bound"
        );
        // Otherwise: apply the rules.
        let apply = "simplest here: sudo lowport rules apply (nftables) — one-shot kernel NAT, nothing keeps running";
        assert_eq!(
            recommend_for(&["80:8080"], Mode::Rules, &problem, false, true),
            apply
        );
        assert_eq!(
            recommend_for(&["80:8080"], Mode::None, &ok, false, true),
            apply
        );
    }

    #[test]
    fn recommendation_names_what_stands_in_the_way() {
        let rec =
            |mode, findings: &[Finding]| recommend_for(&["80:8080"], mode, findings, false, true);
        // Another NAT rule that wins: remove it first.
        let nat_problem = [
            finding(Status::Ok, "rules", None),
            finding(Status::Problem, "nat", Some("remove")),
        ];
        let first = "simplest here: first remove the other NAT rule that claims the port (see ✗ nat above); then sudo lowport rules apply";
        assert_eq!(rec(Mode::Rules, &nat_problem), first);
        assert_eq!(rec(Mode::None, &nat_problem), first);
        // Not when it only warns, or names no fix.
        let nat_warning = [
            finding(Status::Warning, "nat", Some("remove")),
            finding(Status::Problem, "rules", None),
        ];
        assert!(
            rec(Mode::None, &nat_warning).starts_with("simplest here: sudo lowport rules apply")
        );
        let no_fix = [finding(Status::Problem, "nat", None)];
        assert!(rec(Mode::None, &no_fix).starts_with("simplest here: sudo lowport rules apply"));
        let other_topic = [finding(Status::Problem, "target", Some("start it"))];
        assert!(
            rec(Mode::None, &other_topic).starts_with("simplest here: sudo lowport rules apply")
        );
        // An input firewall that drops the translated port: say so.
        let extra = "simplest here: sudo lowport rules apply (nftables) — one-shot kernel NAT, nothing keeps running, and allow the translated ports in the input firewall (see ✗ input above)";
        assert_eq!(
            rec(
                Mode::None,
                &[finding(Status::Problem, "input", Some("nft insert"))]
            ),
            extra
        );
        assert_eq!(
            rec(
                Mode::None,
                &[finding(Status::Warning, "input", Some("nft insert"))]
            ),
            extra
        );
        let plain = "simplest here: sudo lowport rules apply (nftables) — one-shot kernel NAT, nothing keeps running";
        assert_eq!(
            rec(Mode::None, &[finding(Status::Ok, "input", Some("x"))]),
            plain
        );
        assert_eq!(
            rec(Mode::None, &[finding(Status::Warning, "input", None)]),
            plain
        );
        assert_eq!(
            rec(Mode::None, &[finding(Status::Warning, "nat", Some("x"))]),
            plain
        );
    }

    #[test]
    fn report_text_and_json() {
        let report = Report {
            ok: false,
            mode: Mode::Proxy,
            findings: vec![
                finding(Status::Ok, "config", None),
                finding(Status::Problem, "target", Some("start it")),
                finding(Status::Warning, "input", None),
            ],
            recommendation: "do this".into(),
        };
        assert_eq!(
            report.to_text(),
            "✓ config: m\n✗ target: m\n    fix: start it\n! input: m\n→ do this\n"
        );
        let v: Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            v,
            json!({"ok": false, "mode": "proxy", "recommendation": "do this", "findings": [
                {"status": "ok", "topic": "config", "message": "m"},
                {"status": "problem", "topic": "target", "message": "m", "fix": "start it"},
                {"status": "warning", "topic": "input", "message": "m"},
            ]})
        );
        assert_eq!(
            [Mode::Rules, Mode::Proxy, Mode::None].map(|m| m.to_string()),
            ["rules", "proxy", "none"]
        );
    }

    #[test]
    fn shell_quote_quotes_what_a_shell_would_split() {
        assert_eq!(shell_quote("/etc/lowport.yaml"), "/etc/lowport.yaml");
        assert_eq!(shell_quote("a:b=c@d,e+f_g-h.i"), "a:b=c@d,e+f_g-h.i");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("$(x)"), "'$(x)'");
    }

    fn socket(l4: L4, addr: &str) -> Socket {
        Socket {
            l4,
            addr: addr.parse().unwrap(),
            uid: 1000,
            processes: Vec::new(),
        }
    }

    #[test]
    fn listeners_that_serve_an_address() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(accepts(ip("::"), ip("127.0.0.1")));
        assert!(accepts(ip("::"), ip("::1")));
        assert!(accepts(ip("0.0.0.0"), ip("192.0.2.1")));
        assert!(!accepts(ip("0.0.0.0"), ip("::1")));
        assert!(accepts(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(!accepts(ip("127.0.0.1"), ip("127.0.0.2")));
        assert!(!accepts(ip("127.0.0.1"), ip("::1")));
        assert!(accepts(ip("::ffff:127.0.0.1"), ip("127.0.0.1")));
        assert!(!accepts(ip("::ffff:127.0.0.1"), ip("127.0.0.2")));
        assert!(!accepts(ip("::1"), ip("127.0.0.1")));
        assert!(accepts(ip("::1"), ip("::1")));
        let l = Listeners {
            all: vec![
                socket(L4::Tcp, "127.0.0.1:8080"),
                socket(L4::Udp, "0.0.0.0:8080"),
                socket(L4::Tcp, "[::]:8443"),
                socket(L4::Tcp, "0.0.0.0:9000"),
            ],
        };
        let addrs = |l4, port, to| -> Vec<String> {
            l.serving(l4, port, ip(to))
                .iter()
                .map(|s| s.addr.to_string())
                .collect()
        };
        assert_eq!(addrs(L4::Tcp, 8080, "127.0.0.1"), ["127.0.0.1:8080"]);
        assert_eq!(addrs(L4::Udp, 8080, "127.0.0.1"), ["0.0.0.0:8080"]);
        assert!(addrs(L4::Tcp, 8080, "192.0.2.1").is_empty());
        assert_eq!(addrs(L4::Tcp, 8443, "192.0.2.1"), ["[::]:8443"]);
        assert!(addrs(L4::Udp, 8443, "192.0.2.1").is_empty());
        assert!(addrs(L4::Tcp, 9001, "127.0.0.1").is_empty());
    }
}

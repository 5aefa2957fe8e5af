//! Side-by-side measurements: `lowport proxy` and kernel DNAT (lowport's own
//! nftables rules) against the relays a user would pick instead, in one
//! interleaved run, so machine drift hits every row alike.
//!
//! Run as root: `cargo bench --bench peers` (`LOWPORT_BENCH_QUICK=1` for a
//! short smoke run, `LOWPORT_BENCH_SECS=10` to lengthen each figure for a
//! profiler, `LOWPORT_BENCH_ROUNDS=15` for more rounds than five,
//! `LOWPORT_BENCH_ONLY=lowport,haproxy` for those rows and direct,
//! `LOWPORT_BENCH_FIGURES=short,ka` for those figures only; `udp` is the
//! figure of the UDP rows, `LOWPORT_BENCH_ONLY=udp` runs them alone).
//! Everything runs inside a network namespace this
//! program makes, on its loopback; nothing touches the host's firewall.
//! Peers missing from the machine are installed with apt-get when possible,
//! else their row says why it is skipped.
//!
//! Pinning: this process (load generator and backend) runs on CPU 0, each
//! proxy alone on CPU 1, one worker per proxy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "peers/udp.rs"]
mod udp;

const BACKEND_PORT: u16 = 9000;

/// Bytes the backend received on bulk connections, and how many of them
/// have ended: the bulk figure is counted where the data arrives, and needs
/// no half-close (which some peers do not pass through).
static BULK_BYTES: AtomicU64 = AtomicU64::new(0);
static BULK_DONE: AtomicU64 = AtomicU64::new(0);
const REQ: usize = 64;

// ---------------------------------------------------------------- setup

/// `LOWPORT_BENCH_FIGURES=short,ka`: measure only these figures (bulk,
/// short, ka, idle, rules), to attach a profiler to one kind of load.
fn figure(name: &str) -> bool {
    std::env::var("LOWPORT_BENCH_FIGURES").map_or(true, |f| f.split(',').any(|x| x.trim() == name))
}

fn quick() -> bool {
    std::env::var_os("LOWPORT_BENCH_QUICK").is_some()
}

fn pin_self_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; the
    // call only changes this process's affinity (threads inherit it).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on a stack struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(1 << 20);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// The namespace the whole run happens in; deleted on drop.
struct Netns(String);

impl Netns {
    /// Make a namespace and move the calling thread into it; processes it
    /// starts from then on live there too.
    fn enter_new(tag: &str) -> Netns {
        let name = format!("lpbench-{tag}-{}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let file = std::fs::File::open(format!("/run/netns/{name}")).expect("netns file");
        use std::os::fd::AsRawFd;
        // SAFETY: valid namespace fd. setns moves the calling thread only:
        // the first call comes before any thread is spawned, so the whole
        // process lives there; children inherit the caller's namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        run("ip", &["link", "set", "lo", "up"]);
        for (k, v) in [
            ("net.ipv4.ip_local_port_range", "1024 65000"),
            ("net.ipv4.tcp_tw_reuse", "1"),
            ("net.core.somaxconn", "8192"),
            ("net.ipv4.tcp_max_syn_backlog", "8192"),
            // Closed connections leave orphaned sockets in FIN_WAIT2 for
            // this long; they would still be freed during the next row's
            // idle-memory figure (one once came out negative).
            ("net.ipv4.tcp_fin_timeout", "2"),
            // The DNAT row's short connections leave conntrack entries in
            // TIME_WAIT (two minutes by default) that the kernel keeps
            // walking and expiring while the next rows run.
            ("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1"),
        ] {
            let _ = Command::new("sysctl")
                .args(["-qw", &format!("{k}={v}")])
                .status();
        }
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn ensure_packages() {
    let wanted = [
        ("haproxy", "haproxy"),
        ("socat", "socat"),
        ("rinetd", "rinetd"),
        ("redir", "redir"),
        ("nginx", "nginx-light libnginx-mod-stream"),
        ("nft", "nftables"),
        ("iptables-restore", "iptables"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        // The UDP rows alone need no TCP-only relay.
        .filter(|(cmd, _)| !udp::only() || ["socat", "nginx", "nft"].contains(cmd))
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return;
    }
    eprintln!("installing: {}", missing.join(" "));
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {} >/dev/null",
                missing.join(" ")
            ),
        ])
        .status();
}

// ---------------------------------------------------------------- backend

/// Backend on CPU 0: one event loop (a current-thread tokio runtime on its
/// own thread), so that serving thousands of connections costs the load
/// generator's core no thread switches. The first byte of a connection
/// picks its job.
/// `B`: sink everything until the client closes, counting it.
/// `R`: answer every REQ-byte request with REQ bytes.
/// `I`: idle; hold the connection until the client closes.
fn start_backend() {
    let listener = TcpListener::bind(("127.0.0.1", BACKEND_PORT)).expect("backend bind");
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("backend runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("backend listener");
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(s));
            }
        });
    });
}

async fn serve(mut s: tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.set_nodelay(true)?;
    let mode = s.read_u8().await?;
    match mode {
        b'B' => {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => BULK_BYTES.fetch_add(n as u64, Ordering::Relaxed),
                };
            }
            BULK_DONE.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        b'H' => {
            // Half-close: count what comes until the client's FIN, then
            // answer with the count (only a relay that passes the FIN on
            // and keeps the other direction open lets it through).
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf).await? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            s.write_all(&total.to_be_bytes()).await?;
            Ok(())
        }
        b'X' => {
            // Reset: answer the first byte with a RST.
            let _ = s.read_u8().await?;
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
            Ok(())
        }
        b'R' => {
            let mut buf = [0u8; REQ];
            loop {
                if s.read_exact(&mut buf).await.is_err() {
                    return Ok(());
                }
                s.write_all(&buf).await?;
            }
        }
        _ => {
            let mut buf = [0u8; 16];
            while s.read(&mut buf).await? > 0 {}
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- peers

struct Peer {
    name: &'static str,
    /// Where clients connect.
    port: u16,
    /// Processes to measure (the proxy's main pid); empty for kernel rows.
    child: Option<Child>,
    /// Why the row is empty, if it is.
    skipped: Option<String>,
    /// Kernel rows have no process whose CPU can be read.
    kernel: bool,
    _tmp: Option<PathBuf>,
}

/// Where the kernel DNAT row listens.
const DNAT_PORT: u16 = 10080;

/// Install (or remove) lowport's rules for the kernel DNAT row. They are in
/// place only while that row is measured: NAT rules make every packet in
/// the namespace go through conntrack, which the relays' rows would
/// otherwise pay for too, and the conntrack entries of the DNAT row's short
/// connections would weigh on whichever row came next.
fn dnat_rules(on: bool) -> Result<(), String> {
    let mut cmd = Command::new(lowport_bin());
    if on {
        cmd.args([
            "-m",
            &format!("{DNAT_PORT}:{BACKEND_PORT}"),
            "rules",
            "apply",
        ]);
    } else {
        cmd.args(["rules", "remove"]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "lowport rules {} failed: {}",
            if on { "apply" } else { "remove" },
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Runs `f` with the row's rules in place (kernel rows only).
fn with_rules<T>(p: &Peer, f: impl FnOnce() -> T) -> T {
    if p.kernel {
        if let Err(e) = dnat_rules(true) {
            panic!("{e}");
        }
    }
    let out = f();
    if p.kernel {
        if let Err(e) = dnat_rules(false) {
            panic!("{e}");
        }
    }
    out
}

/// A relay's command, pinned to CPU 1 and started in the peer's own
/// cgroups (`peer_cgroups(port)`), so everything it forks is measured with
/// it — redir's connection processes detach from their parent, and forked
/// children that exit take their CPU time along unless someone waits for
/// them.
fn taskset_cpu1(program: &str, port: u16) -> Command {
    let joins: String = peer_cgroups(port)
        .iter()
        .map(|cg| format!("echo $$ > '{}/cgroup.procs' && ", cg.display()))
        .collect();
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("{joins}exec taskset -c 1 \"$@\""))
        .arg("sh")
        .arg(program);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// The cgroup hierarchies a run uses.
#[derive(Clone, Copy)]
enum Hierarchy {
    /// cgroup v2: a relay's processes and CPU time (and, where its memory
    /// controller is enabled, the kernel memory charged to the relay).
    Unified,
    /// The cgroup v1 memory controller, where it is mounted (hybrid
    /// systems such as this VM's): the kernel memory charged to the relay.
    Memory,
}

/// This run's directory in a hierarchy, made on first use; None where the
/// hierarchy is not mounted or not writable (processes are then found by
/// parentage, and a relay's own kernel memory is not measured).
fn bench_cgroup(h: Hierarchy) -> Option<&'static Path> {
    use std::sync::OnceLock;
    static UNIFIED: OnceLock<Option<PathBuf>> = OnceLock::new();
    static MEMORY: OnceLock<Option<PathBuf>> = OnceLock::new();
    let cell = match h {
        Hierarchy::Unified => &UNIFIED,
        Hierarchy::Memory => &MEMORY,
    };
    cell.get_or_init(|| {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        let root = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (fstype, opts) = (*f.get(2)?, *f.get(3)?);
            let wanted = match h {
                Hierarchy::Unified => fstype == "cgroup2",
                Hierarchy::Memory => fstype == "cgroup" && opts.split(',').any(|o| o == "memory"),
            };
            wanted.then(|| PathBuf::from(f[1]))
        })?;
        let dir = root.join(format!("lowport-bench-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        if matches!(h, Hierarchy::Unified) {
            // Lets each relay's cgroup account memory where the root
            // delegates the controller; fails harmlessly where not.
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory");
        }
        Some(dir)
    })
    .as_deref()
}

/// The cgroup a relay listening on `port` runs in, in one hierarchy.
fn peer_cgroup(h: Hierarchy, port: u16) -> Option<PathBuf> {
    let dir = bench_cgroup(h)?.join(port.to_string());
    (dir.is_dir() || std::fs::create_dir(&dir).is_ok()).then_some(dir)
}

fn peer_cgroups(port: u16) -> Vec<PathBuf> {
    [Hierarchy::Unified, Hierarchy::Memory]
        .into_iter()
        .filter_map(|h| peer_cgroup(h, port))
        .collect()
}

/// Kill whatever is left in this run's cgroups and remove them.
fn remove_cgroups() {
    for h in [Hierarchy::Unified, Hierarchy::Memory] {
        let Some(dir) = bench_cgroup(h) else { continue };
        let subs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        for sub in &subs {
            // cgroup v2 kills a whole cgroup at once; v1 has no such file.
            if std::fs::write(sub.join("cgroup.kill"), "1").is_err() {
                let pids = std::fs::read_to_string(sub.join("cgroup.procs")).unwrap_or_default();
                for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill has no memory preconditions; the pid is
                    // a relay this run started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for _ in 0..50 {
            if subs
                .iter()
                .all(|s| std::fs::remove_dir(s).is_ok() || !s.exists())
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir(dir);
    }
}

fn write_tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowport-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write tmp");
    p
}

/// Remove this run's directory of config files (write_tmp).
fn remove_tmp() {
    let dir = std::env::temp_dir().join(format!("lowport-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(dir);
}

fn lowport_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lowport"))
}

fn start_peers() -> Vec<Peer> {
    let b = format!("127.0.0.1:{BACKEND_PORT}");
    let mut peers = Vec::new();
    let mut add =
        |name: &'static str,
         port: u16,
         start: &dyn Fn(u16) -> Result<(Option<Child>, Option<PathBuf>), String>| {
            let (child, tmp, skipped) = match start(port) {
                Ok((c, t)) => (c, t, None),
                Err(why) => (None, None, Some(why)),
            };
            peers.push(Peer {
                name,
                port,
                kernel: child.is_none() && skipped.is_none(),
                child,
                skipped,
                _tmp: tmp,
            });
        };
    add("direct", BACKEND_PORT, &|_| Ok((None, None)));
    // Its rules are installed only while its row is measured (dnat_rules).
    add("kernel DNAT (lowport rules)", DNAT_PORT, &|_| {
        Ok((None, None))
    });
    add("lowport proxy", 10081, &|port| {
        // Every client of the benchmark is 127.0.0.1: the per-client limit
        // (512 by default) would reset most of its 3000 idle connections.
        let cfg = write_tmp(
            "lowport.yaml",
            "proxy:\n  max_connections_per_client: 4096\n",
        );
        let c = taskset_cpu1(lowport_bin().to_str().unwrap_or("lowport"), port)
            .args(["-q", "-c"])
            .arg(&cfg)
            .args(["-m", &format!("127.0.0.1:{port}:{b}"), "proxy"])
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), Some(cfg)))
    });
    add("haproxy (splice-auto)", 10082, &|port| {
        if !have("haproxy") {
            return Err("haproxy is not installed".into());
        }
        let cfg = write_tmp(
            "haproxy.cfg",
            &format!(
                "global\n  nbthread 1\n  maxconn 7000\n  tune.maxaccept 64\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10m\n  timeout server 10m\n  option splice-auto\n  maxconn 7000\nlisten p\n  bind 127.0.0.1:{port}\n  server s {b}\n"
            ),
        );
        let c = taskset_cpu1("haproxy", port)
            .args(["-db", "-f"])
            .arg(&cfg)
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), Some(cfg)))
    });
    add("nginx stream", 10083, &|port| {
        let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
        if !have("nginx") || !Path::new(module).exists() {
            return Err("nginx with the stream module is not installed".into());
        }
        let dir = std::env::temp_dir().join(format!("lowport-bench-{}", std::process::id()));
        let cfg = write_tmp(
            "nginx.conf",
            &format!(
                "load_module {module};\nworker_processes 1;\nworker_rlimit_nofile 18000;\ndaemon off;\nmaster_process off;\npid {pid};\nerror_log stderr error;\nevents {{ worker_connections 8000; multi_accept on; }}\nstream {{ server {{ listen 127.0.0.1:{port}; proxy_pass {b}; }} }}\n",
                pid = dir.join("nginx.pid").display()
            ),
        );
        let c = taskset_cpu1("nginx", port)
            .arg("-c")
            .arg(&cfg)
            .arg("-p")
            .arg(&dir)
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), Some(cfg)))
    });
    add("socat (fork)", 10084, &|port| {
        if !have("socat") {
            return Err("socat is not installed".into());
        }
        let c = taskset_cpu1("socat", port)
            .args([
                &format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=4096"),
                &format!("TCP:{b},nodelay"),
            ])
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), None))
    });
    add("systemd-socket-proxyd", 10085, &|port| {
        let proxyd = [
            "/lib/systemd/systemd-socket-proxyd",
            "/usr/lib/systemd/systemd-socket-proxyd",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("systemd-socket-proxyd is not installed")?;
        if !have("systemd-socket-activate") {
            return Err("systemd-socket-activate is not installed".into());
        }
        let c = taskset_cpu1("systemd-socket-activate", port)
            .args([
                "-l",
                &format!("127.0.0.1:{port}"),
                proxyd,
                "--connections-max=8000",
                &b,
            ])
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), None))
    });
    add("rinetd", 10086, &|port| {
        if !have("rinetd") {
            return Err("rinetd is not installed".into());
        }
        let cfg = write_tmp(
            "rinetd.conf",
            &format!("127.0.0.1 {port} 127.0.0.1 {BACKEND_PORT}\n"),
        );
        let c = taskset_cpu1("rinetd", port)
            .args(["-f", "-c"])
            .arg(&cfg)
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), Some(cfg)))
    });
    add("redir", 10087, &|port| {
        if !have("redir") {
            return Err("redir is not installed".into());
        }
        // redir forks twice per connection: its connection processes are
        // orphans, and the init of a container or a VM may reap them late
        // (here: over ten thousand zombies at once, near pid_max). Run it
        // under this program as their reaper.
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let c = taskset_cpu1(&me.to_string_lossy(), port)
            .args(["--reap", "redir", "-n", &format!("127.0.0.1:{port}"), &b])
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), None))
    });
    // Wait until every started peer accepts.
    for p in &mut peers {
        if p.skipped.is_some() {
            continue;
        }
        let addr: SocketAddr = ([127, 0, 0, 1], p.port).into();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut up = false;
        if p.kernel {
            // The DNAT row: its rules, for this check only.
            if let Err(e) = dnat_rules(true) {
                p.skipped = Some(e);
                continue;
            }
        }
        while Instant::now() < deadline {
            if let Some(c) = &mut p.child {
                if let Ok(Some(status)) = c.try_wait() {
                    p.skipped = Some(format!("exited at start ({status})"));
                    break;
                }
            }
            if let Ok(mut s) = TcpStream::connect(addr) {
                // A full round trip: the relay really reaches the backend.
                if s.write_all(b"R").is_ok() && s.write_all(&[0u8; REQ]).is_ok() {
                    let mut buf = [0u8; REQ];
                    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                    if s.read_exact(&mut buf).is_ok() {
                        up = true;
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if p.kernel {
            if let Err(e) = dnat_rules(false) {
                p.skipped = Some(e);
            }
        }
        if !up && p.skipped.is_none() {
            p.skipped = Some("did not relay within 5 s".into());
        }
    }
    peers
}

// ---------------------------------------------------------------- process stats

/// Every pid in the process tree under `root` (socat and redir fork).
fn tree(root: u32) -> Vec<u32> {
    let mut parents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).and_then(|s| s.parse().ok()))
            {
                parents.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = parents.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// Fields of /proc/PID/stat after the command name (state is [0]).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The relay's processes: those in its cgroup, or else the tree under its
/// pid; none for the kernel rows.
fn procs(p: &Peer) -> Vec<u32> {
    let Some(child) = &p.child else {
        return Vec::new();
    };
    if let Some(text) = peer_cgroup(Hierarchy::Unified, p.port)
        .and_then(|cg| std::fs::read_to_string(cg.join("cgroup.procs")).ok())
    {
        return text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    }
    tree(child.id())
}

/// CPU seconds the relay used: its cgroup's (every process it ever ran),
/// or else its tree's, children that exited and were waited for included.
fn cpu_seconds(p: &Peer) -> Option<f64> {
    p.child.as_ref()?;
    if let Some(text) = peer_cgroup(Hierarchy::Unified, p.port)
        .and_then(|cg| std::fs::read_to_string(cg.join("cpu.stat")).ok())
    {
        let usec = text
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<f64>().ok())?;
        return Some(usec / 1e6);
    }
    let hz = clock_ticks();
    Some(
        procs(p)
            .into_iter()
            .filter_map(stat_fields)
            .map(|f| {
                // utime, stime, cutime, cstime are fields 14-17 (1-based) of stat.
                (11..15)
                    .filter_map(|i| f.get(i)?.parse::<f64>().ok())
                    .sum::<f64>()
            })
            .sum::<f64>()
            / hz,
    )
}

fn pss_kib(p: &Peer) -> u64 {
    procs(p)
        .into_iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .filter_map(|t| {
            t.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum()
}

/// Kernel memory charged to the relay's cgroup, in KiB: the sockets it
/// accepted and opened (the kernel charges an accepted socket to the
/// acceptor), their files, its epoll entries and pipes, its processes'
/// stacks and page tables — and none of the client's and backend's. From
/// the cgroup v1 memory controller's `memory.kmem.usage_in_bytes`, or cgroup
/// v2's `memory.stat` (kernel + sock); None where neither is available.
fn relay_kernel_kib(p: &Peer) -> Option<u64> {
    p.child.as_ref()?;
    if let Some(dir) = peer_cgroup(Hierarchy::Memory, p.port) {
        let text = std::fs::read_to_string(dir.join("memory.kmem.usage_in_bytes")).ok()?;
        return Some(text.trim().parse::<u64>().ok()? / 1024);
    }
    let dir = peer_cgroup(Hierarchy::Unified, p.port)?;
    let text = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
    };
    Some((field("kernel ")? + field("sock ").unwrap_or(0)) / 1024)
}

fn fd_count(p: &Peer) -> usize {
    procs(p)
        .into_iter()
        .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
        .map(|d| d.count())
        .sum()
}

/// Kernel memory that grows with connections: the slab caches sockets,
/// their files, epoll entries, pipes, conntrack and kmalloc use (not the dentry and
/// inode caches of the whole machine, which the kernel shrinks and grows on
/// its own and which once made a row negative), TCP buffer pages, and the
/// kernel stacks and page tables of processes (socat forks one per
/// connection).
fn kernel_kib() -> u64 {
    const CACHES: &[&str] = &[
        "TCP",
        "TCPv6",
        "sock_inode_cache",
        "eventpoll_epi",
        "eventpoll_pwq",
        "filp",
        "pipe_inode_info",
        "skbuff_head_cache",
        "skbuff_small_head",
        "skbuff_fclone_cache",
        "nf_conntrack",
    ];
    let slabinfo = std::fs::read_to_string("/proc/slabinfo").unwrap_or_default();
    let slab_bytes: u64 = slabinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let name = *f.first()?;
            if !(CACHES.contains(&name) || name.starts_with("kmalloc-")) {
                return None;
            }
            // name active_objs num_objs objsize ...
            Some(f.get(1)?.parse::<u64>().ok()? * f.get(3)?.parse::<u64>().ok()?)
        })
        .sum();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp_pages: u64 = sockstat
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            let i = parts.iter().position(|p| *p == "mem")?;
            parts.get(i + 1)?.parse().ok()
        })
        .unwrap_or(0);
    slab_bytes / 1024 + field("KernelStack:") + field("PageTables:") + tcp_pages * 4
}

// ---------------------------------------------------------------- load

/// How long a load generator waits on one read or write before it calls the
/// peer broken (a peer that loses a byte would otherwise hang the run).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// Clock ticks per second, the unit of /proc's CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// One CPU's time from /proc/stat, in clock ticks: busy (user, system,
/// interrupts) and the total the guest had (without steal).
#[derive(Default, Clone, Copy)]
struct CpuTime {
    busy: u64,
    total: u64,
}

/// CPU 0 (load generator, backend and the kernel work their sockets do)
/// and CPU 1 (the proxy, and the kernel work its sockets do).
fn cpu_jiffies() -> [CpuTime; 2] {
    let mut out = [CpuTime::default(); 2];
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    for (i, name) in ["cpu0", "cpu1"].into_iter().enumerate() {
        let Some(line) = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
        else {
            continue;
        };
        // user nice system idle iowait irq softirq steal ...
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if f.len() == 8 {
            let total = f[..7].iter().sum::<u64>();
            out[i] = CpuTime {
                busy: total - f[3] - f[4],
                total,
            };
        }
    }
    out
}

/// Bulk: `streams` connections each send for `secs` then close; returns
/// bytes/s as received by the backend, until the last stream ended there.
fn bulk(port: u16, streams: usize, secs: f64) -> std::io::Result<f64> {
    let (bytes0, done0) = (
        BULK_BYTES.load(Ordering::SeqCst),
        BULK_DONE.load(Ordering::SeqCst),
    );
    let start = Instant::now();
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut s = connect(port)?;
                s.write_all(b"B")?;
                let buf = vec![0x5au8; 256 * 1024];
                let end = Instant::now() + Duration::from_secs_f64(secs);
                while Instant::now() < end {
                    s.write_all(&buf)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| std::io::Error::other("bulk thread panicked"))??;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while BULK_DONE.load(Ordering::SeqCst) < done0 + streams as u64 {
        if Instant::now() > deadline {
            return Err(std::io::Error::other(
                "bulk streams did not end at the backend",
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let bytes = BULK_BYTES.load(Ordering::SeqCst) - bytes0;
    Ok(bytes as f64 / start.elapsed().as_secs_f64())
}

/// Does the relay pass a half-close through? The client sends, shuts down
/// writing, and must still get the backend's answer.
fn passes_half_close(port: u16) -> Result<(), String> {
    const LEN: usize = 100_000;
    let mut s = connect(port).map_err(|e| e.to_string())?;
    let mut msg = vec![0x33u8; LEN + 1];
    msg[0] = b'H';
    s.write_all(&msg).map_err(|e| e.to_string())?;
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) if got == (LEN as u64).to_be_bytes() => Ok(()),
        Ok(_) if got.is_empty() => Err("closed without the answer".into()),
        Ok(_) => Err(format!("wrong answer ({} bytes)", got.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// Does the relay pass a backend's reset on as a reset, not a clean close?
fn passes_reset(port: u16) -> Result<(), String> {
    let mut s = connect(port).map_err(|e| e.to_string())?;
    s.write_all(b"X!").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    // EINTR says nothing about the connection: read again.
    let read = loop {
        match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Ok(0) => Err("clean close (FIN)".into()),
        Ok(n) => Err(format!("{n} unexpected bytes")),
        Err(e) => Err(e.to_string()),
    }
}

/// Percentile of sorted latencies, in microseconds.
fn p99_us(mut lat: Vec<Duration>) -> f64 {
    if lat.is_empty() {
        return f64::NAN;
    }
    lat.sort_unstable();
    lat[(lat.len() * 99 / 100).min(lat.len() - 1)].as_secs_f64() * 1e6
}

/// Run `workers` copies of `work` as tasks of one event loop on this thread
/// (pinned to CPU 0), each told to stop through the flag, for `secs`; return
/// (operations/s, p99 µs) over every latency recorded. One thread rather
/// than a thread per connection: a load generator that spends more CPU per
/// request than the relay under test measures itself.
fn timed_workers<F>(
    workers: usize,
    secs: f64,
    work: impl Fn(Arc<AtomicBool>) -> F,
) -> std::io::Result<(f64, f64)>
where
    F: std::future::Future<Output = std::io::Result<Vec<Duration>>> + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let all = rt.block_on(async {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let handles: Vec<_> = (0..workers)
                    .map(|_| tokio::task::spawn_local(work(stop.clone())))
                    .collect();
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                stop.store(true, Ordering::Relaxed);
                let mut all = Vec::new();
                for h in handles {
                    all.extend(h.await.map_err(std::io::Error::other)??);
                }
                Ok::<_, std::io::Error>(all)
            })
            .await
    })?;
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    Ok((rate, p99_us(all)))
}

/// One read or write of the load generators, bounded by IO_TIMEOUT and
/// naming a stall for what it is.
async fn io_within<T>(
    what: &str,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match tokio::time::timeout(IO_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(std::io::Error::other(format!(
            "{what} ({e}): the relay lost or held bytes"
        ))),
        Err(_) => Err(std::io::Error::other(format!(
            "{what}: nothing within {IO_TIMEOUT:?}: the relay lost or held bytes"
        ))),
    }
}

async fn connect_async(port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let s = io_within(
        "connect",
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Short connections: each does connect, one request, one answer, close.
/// Returns (connections/s, p99 µs).
fn short_conns(port: u16, workers: usize, secs: f64) -> std::io::Result<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    timed_workers(workers, secs, move |stop| async move {
        let mut lat = Vec::new();
        let mut msg = [0u8; REQ + 1];
        msg[0] = b'R';
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let mut s = connect_async(port).await?;
            io_within("request", s.write_all(&msg)).await?;
            let mut buf = [0u8; REQ];
            io_within("no complete answer", s.read_exact(&mut buf)).await?;
            drop(s);
            lat.push(t.elapsed());
        }
        Ok(lat)
    })
}

/// Keep-alive: `conns` connections doing request/answer ping-pong.
/// Returns (requests/s, p99 µs). The connections open one at a time, each
/// with one round trip, before the ping-pong starts: the figure is about
/// requests on open connections, not a burst of connects (32 at once
/// overflowed redir's listen queue of 10; with SYN cookies in play a
/// client's first byte was then lost — the kernel counted TCPAbortOnData —
/// and the stream went out of step).
fn keepalive(port: u16, conns: usize, secs: f64) -> std::io::Result<(f64, f64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let opening = Arc::new(tokio::sync::Mutex::new(()));
    timed_workers(conns, secs, move |stop| {
        let opening = Arc::clone(&opening);
        async move {
            let req = [7u8; REQ];
            let mut buf = [0u8; REQ];
            let mut s = {
                let _turn = opening.lock().await;
                let mut s = connect_async(port).await?;
                io_within("mode byte", s.write_all(b"R")).await?;
                io_within("request", s.write_all(&req)).await?;
                io_within("no complete answer", s.read_exact(&mut buf)).await?;
                s
            };
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                io_within("request", s.write_all(&req)).await?;
                io_within("no complete answer", s.read_exact(&mut buf)).await?;
                lat.push(t.elapsed());
            }
            Ok(lat)
        }
    })
}

/// Wait (up to a minute) until no orphaned TCP socket is left and the
/// number of TCP sockets has stopped changing for a second: what the last
/// figure closed is freed before memory is read.
fn settle_sockets() {
    let tcp = || {
        let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
        let line = text.lines().find(|l| l.starts_with("TCP:"))?.to_owned();
        let field = |name: &str| -> Option<u64> {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let i = parts.iter().position(|p| *p == name)?;
            parts.get(i + 1)?.parse().ok()
        };
        Some((field("orphan")?, field("alloc")?))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = tcp();
    let mut steady_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = tcp();
        if now != last {
            last = now;
            steady_since = Instant::now();
        } else if now.is_some_and(|(orphan, _)| orphan == 0)
            && steady_since.elapsed() >= Duration::from_secs(1)
        {
            return;
        }
    }
}

/// What `n` idle connections cost, per connection, as deltas against none.
struct Idle {
    /// The relay's PSS, KiB.
    pss: f64,
    /// Kernel memory charged to the relay's cgroup, KiB (`relay_kernel_kib`).
    relay_kernel: Option<f64>,
    /// Machine-wide kernel memory (`kernel_kib`), KiB: includes the
    /// client's and the backend's sockets, and the noise of every other
    /// allocation on the machine.
    machine_kernel: f64,
    fds: f64,
    /// Seconds to open all `n`, one after another. A connect returns once
    /// the kernel has queued the connection for the relay; only a relay
    /// that accepts slower than clients connect fills its listen queue and
    /// makes the next connects wait: what accepting costs a relay that
    /// already holds many connections.
    open_secs: f64,
}

/// Idle connections: open `n`, each sending one byte (so every relay has
/// moved data once), wait, measure.
fn idle(peer: &Peer, n: usize) -> std::io::Result<Idle> {
    let settle = || std::thread::sleep(Duration::from_millis(500));
    settle_sockets();
    let (pss0, fd0, k0, r0) = (
        pss_kib(peer),
        fd_count(peer),
        kernel_kib(),
        relay_kernel_kib(peer),
    );
    let mut conns = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let mut s = connect(peer.port)?;
        s.write_all(b"I")?;
        conns.push(s);
    }
    let open_secs = started.elapsed().as_secs_f64();
    settle();
    let (pss1, fd1, k1, r1) = (
        pss_kib(peer),
        fd_count(peer),
        kernel_kib(),
        relay_kernel_kib(peer),
    );
    drop(conns);
    settle();
    let per = |a: u64, b: u64| (b as f64 - a as f64) / n as f64;
    Ok(Idle {
        pss: per(pss0, pss1),
        relay_kernel: r0.zip(r1).map(|(a, b)| per(a, b)),
        machine_kernel: per(k0, k1),
        fds: (fd1 as f64 - fd0 as f64) / n as f64,
        open_secs,
    })
}

// ---------------------------------------------------------------- report

#[derive(Default, Clone)]
struct Row {
    samples: BTreeMap<&'static str, Vec<f64>>,
    error: Option<String>,
}

impl Row {
    fn add(&mut self, key: &'static str, v: f64) {
        self.samples.entry(key).or_default().push(v);
    }
    /// Each CPU's busy share (%) since `before`, under `figure`'s keys;
    /// returns CPU 0's busy seconds.
    fn add_busy(&mut self, figure: &str, before: &[CpuTime; 2]) -> f64 {
        let keys = match figure {
            "bulk" => ["bulk_busy0", "bulk_busy1"],
            "short" => ["short_busy0", "short_busy1"],
            _ => ["ka_busy0", "ka_busy1"],
        };
        let now = cpu_jiffies();
        for ((key, b), n) in keys.into_iter().zip(before).zip(now) {
            let total = n.total.saturating_sub(b.total);
            if total > 0 {
                self.add(
                    key,
                    100.0 * n.busy.saturating_sub(b.busy) as f64 / total as f64,
                );
            }
        }
        let hz = clock_ticks();
        now[0].busy.saturating_sub(before[0].busy) as f64 / hz
    }
    fn median(&self, key: &str) -> Option<f64> {
        let mut v = self.samples.get(key)?.clone();
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Some(v[v.len() / 2])
    }
}

struct Column {
    key: &'static str,
    title: &'static str,
    fmt: fn(f64) -> String,
    /// Show the ratio to direct (metrics that direct has).
    ratio: bool,
}

fn table(peers: &[Peer], rows: &[Row], cols: &[Column]) -> String {
    let mut out = String::new();
    let _ = write!(out, "| peer |");
    for c in cols {
        let _ = write!(out, " {} |", c.title);
    }
    let _ = write!(out, "\n|---|");
    for _ in cols {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    let direct = &rows[0];
    for (p, r) in peers.iter().zip(rows) {
        let _ = write!(out, "| {} |", p.name);
        if let Some(why) = p.skipped.as_ref().or(r.error.as_ref()) {
            let _ = writeln!(out, " skipped: {why} |");
            continue;
        }
        for c in cols {
            match r.median(c.key) {
                None => {
                    let _ = write!(out, " – |");
                }
                Some(v) => {
                    let ratio = direct
                        .median(c.key)
                        .filter(|d| c.ratio && *d != 0.0)
                        .map(|d| format!(" ({:.2}×)", v / d))
                        .unwrap_or_default();
                    let _ = write!(out, " {}{} |", (c.fmt)(v), ratio);
                }
            }
        }
        out.push('\n');
    }
    out
}

/// One of issue 5's targets: lowport against the best peer on `key`.
struct Target {
    key: &'static str,
    title: &'static str,
    /// The ratio lowport ÷ best peer must reach (at least, or at most).
    limit: f64,
    higher_is_better: bool,
    fmt: fn(f64) -> String,
}

fn fmt_gbs(v: f64) -> String {
    format!("{:.2} GB/s", v / 1e9)
}
fn fmt_num(v: f64) -> String {
    format!("{v:.0}")
}
fn fmt_us(v: f64) -> String {
    format!("{v:.0} µs")
}
fn fmt_s(v: f64) -> String {
    format!("{v:.3} s")
}
fn fmt_kib(v: f64) -> String {
    format!("{v:.1} KiB")
}

const TARGETS: &[Target] = &[
    Target {
        key: "bulk1",
        title: "bulk, 1 stream",
        limit: 1.05,
        higher_is_better: true,
        fmt: fmt_gbs,
    },
    Target {
        key: "bulk4",
        title: "bulk, 4 streams",
        limit: 1.05,
        higher_is_better: true,
        fmt: fmt_gbs,
    },
    Target {
        key: "cpu_per_gb",
        title: "proxy CPU s/GB",
        limit: 0.75,
        higher_is_better: false,
        fmt: fmt_s,
    },
    Target {
        key: "short_rate",
        title: "short conn/s",
        limit: 1.10,
        higher_is_better: true,
        fmt: fmt_num,
    },
    Target {
        key: "short_p99",
        title: "short p99",
        limit: 0.85,
        higher_is_better: false,
        fmt: fmt_us,
    },
    Target {
        key: "ka_rate",
        title: "keep-alive req/s",
        limit: 1.05,
        higher_is_better: true,
        fmt: fmt_num,
    },
    Target {
        key: "ka_p99",
        title: "keep-alive p99",
        limit: 0.90,
        higher_is_better: false,
        fmt: fmt_us,
    },
    Target {
        key: "pss1k",
        title: "proxy PSS/conn @1k",
        limit: 1.0,
        higher_is_better: false,
        fmt: fmt_kib,
    },
    Target {
        key: "pss3k",
        title: "proxy PSS/conn @3k",
        limit: 1.0,
        higher_is_better: false,
        fmt: fmt_kib,
    },
    Target {
        key: "kern1k",
        title: "proxy kernel/conn @1k",
        limit: 1.0,
        higher_is_better: false,
        fmt: fmt_kib,
    },
    Target {
        key: "kern3k",
        title: "proxy kernel/conn @3k",
        limit: 1.0,
        higher_is_better: false,
        fmt: fmt_kib,
    },
];

/// The targets of issue 5, read from this run: lowport ÷ the best peer by
/// median, and the same ratio taken round by round (each round runs every
/// row once, side by side), whose spread shows how much of a difference
/// this machine can resolve.
fn targets(peers: &[Peer], rows: &[Row], list: &[Target], rules: &[RuleRatio]) -> String {
    let mut out = String::from(
        "| figure | target (lowport ÷ best peer) | lowport | best peer | lowport ÷ best peer | same, round by round: middle half (all) | held |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
    );
    let Some(lp) = peers.iter().position(|p| p.name.starts_with("lowport")) else {
        return out;
    };
    let measured = |i: usize| peers[i].skipped.is_none() && rows[i].error.is_none();
    let others: Vec<usize> = (1..peers.len())
        .filter(|&i| i != lp && !peers[i].kernel && measured(i))
        .collect();
    if !measured(lp) {
        return out;
    }
    for t in list {
        let better = |a: f64, b: f64| if t.higher_is_better { a > b } else { a < b };
        let pick = |vals: &mut dyn Iterator<Item = (usize, f64)>| {
            // Every figure here is a positive quantity; zero or less is a
            // measurement that did not work.
            vals.filter(|(_, v)| v.is_finite() && *v > 0.0).fold(
                None,
                |best: Option<(usize, f64)>, (i, v)| match best {
                    Some((_, b)) if !better(v, b) => best,
                    _ => Some((i, v)),
                },
            )
        };
        let (Some(l), Some((bi, b))) = (
            rows[lp].median(t.key),
            pick(
                &mut others
                    .iter()
                    .filter_map(|&i| Some((i, rows[i].median(t.key)?))),
            ),
        ) else {
            continue;
        };
        let ratio = l / b;
        let rounds = rows[lp].samples.get(t.key).map_or(0, Vec::len);
        // Paired with the same peer in each round (taking each round's best
        // of several level peers would favour them by the noise alone).
        let mut per_round: Vec<f64> = (0..rounds)
            .filter_map(|j| {
                let l = *rows[lp].samples.get(t.key)?.get(j)?;
                let b = *rows[bi].samples.get(t.key)?.get(j)?;
                Some(l / b)
            })
            .filter(|r| r.is_finite())
            .collect();
        // The middle half of the rounds' ratios, then all of them: the
        // extremes widen with the number of rounds, the middle half does not.
        per_round.sort_by(f64::total_cmp);
        let n = per_round.len();
        let spread = if n > 1 {
            format!(
                "{:.2}–{:.2}× ({:.2}–{:.2}×)",
                per_round[n / 4],
                per_round[3 * n / 4],
                per_round[0],
                per_round[n - 1]
            )
        } else {
            "– (measured once)".to_owned()
        };
        let held = if ratio == t.limit || better(ratio, t.limit) {
            "yes"
        } else {
            "no"
        };
        let _ = writeln!(
            out,
            "| {} | {} {:.2}× | {} | {} ({}) | {:.2}× | {} | {} |",
            t.title,
            if t.higher_is_better { "≥" } else { "≤" },
            t.limit,
            (t.fmt)(l),
            (t.fmt)(b),
            peers[bi].name,
            ratio,
            spread,
            held
        );
    }
    for r in rules {
        for (what, v) in [("from nothing", r.from_nothing), ("replacing", r.replacing)] {
            let Some(v) = v else { continue };
            let _ = writeln!(
                out,
                "| rules apply, {} mapping(s), {what} | ≤ 1.00× | – | – (nft -f) | {v:.2}× | – | {} |",
                r.mappings,
                if v <= 1.0 { "yes" } else { "no" }
            );
        }
    }
    out
}

// ---------------------------------------------------------------- rule install speed

fn time_cmd(cmd: &mut Command) -> Option<f64> {
    let t = Instant::now();
    let out = cmd.output().ok()?;
    let dt = t.elapsed().as_secs_f64();
    if !out.status.success() {
        eprintln!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(dt)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// lowport ÷ nft -f for one rule-set size: from nothing, and replacing.
struct RuleRatio {
    mappings: usize,
    from_nothing: Option<f64>,
    replacing: Option<f64>,
}

fn rule_install_speed(rounds: usize) -> (String, Vec<RuleRatio>) {
    let mut ratios = Vec::new();
    let mut out = String::from(
        "| mappings | lowport rules apply | nft -f (same ruleset) | iptables-restore (same rules) | lowport / nft \
         | lowport, replacing | nft -f, replacing | lowport / nft | lowport, unchanged |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let bin = lowport_bin();
    let apply = |cfg: &Path| {
        let mut c = Command::new(&bin);
        c.arg("-c").arg(cfg).args(["rules", "apply"]);
        c
    };
    for n in [1usize, 100, 1000] {
        // Two rule sets of n mappings that differ in every target: the
        // second one replaces the first.
        let mut files = Vec::new();
        for (tag, to) in [("a", 40000), ("b", 41000)] {
            let mut yaml = String::from("mappings:\n");
            for i in 0..n {
                let _ = writeln!(yaml, "  - {{listen: {}, to: {}}}", 20000 + i, to + i);
            }
            let cfg = write_tmp(&format!("rules-{n}{tag}.yaml"), &yaml);
            let dry = Command::new(&bin)
                .arg("-c")
                .arg(&cfg)
                .args(["rules", "apply", "--dry-run"])
                .output()
                .expect("dry run");
            let script = write_tmp(
                &format!("rules-{n}{tag}.nft"),
                &String::from_utf8_lossy(&dry.stdout),
            );
            files.push((cfg, script));
        }
        let [(cfg_a, nft_a), (cfg_b, nft_b)] = &files[..] else {
            unreachable!("two rule sets");
        };
        // iptables: the same redirects, prerouting and local output.
        let mut ipt = String::from("*nat\n:LOWPORT-PRE - [0:0]\n:LOWPORT-OUT - [0:0]\n-A PREROUTING -j LOWPORT-PRE\n-A OUTPUT -j LOWPORT-OUT\n");
        for i in 0..n {
            let _ = writeln!(
                ipt,
                "-A LOWPORT-PRE -p tcp --dport {} -j REDIRECT --to-ports {}",
                20000 + i,
                40000 + i
            );
            let _ = writeln!(ipt, "-A LOWPORT-OUT -p tcp -m addrtype --dst-type LOCAL --dport {} -j REDIRECT --to-ports {}", 20000 + i, 40000 + i);
        }
        ipt.push_str("COMMIT\n");
        let ipt_file = write_tmp(&format!("rules-{n}.ipt"), &ipt);
        let mut t: [Vec<f64>; 6] = Default::default();
        for _ in 0..rounds {
            // From nothing, as at boot; then replacing every rule; then
            // the same rules again.
            t[0].extend(time_cmd(&mut apply(cfg_a)));
            t[3].extend(time_cmd(&mut apply(cfg_b)));
            t[5].extend(time_cmd(&mut apply(cfg_b)));
            let _ = Command::new(&bin).args(["rules", "remove"]).output();
            t[1].extend(time_cmd(Command::new("nft").arg("-f").arg(nft_a)));
            t[4].extend(time_cmd(Command::new("nft").arg("-f").arg(nft_b)));
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", "lowport"])
                .output();
            t[2].extend(time_cmd(Command::new("iptables-restore").arg(&ipt_file)));
            let _ = Command::new("iptables").args(["-t", "nat", "-F"]).output();
            let _ = Command::new("iptables").args(["-t", "nat", "-X"]).output();
        }
        let ms = |v: Option<f64>| v.map_or("–".to_owned(), |s| format!("{:.1} ms", s * 1e3));
        let m: Vec<Option<f64>> = t.into_iter().map(median).collect();
        let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
        let ratio =
            |a: Option<f64>, b: Option<f64>| div(a, b).map_or("–".into(), |r| format!("{r:.2}×"));
        ratios.push(RuleRatio {
            mappings: n,
            from_nothing: div(m[0], m[1]),
            replacing: div(m[3], m[4]),
        });
        let _ = writeln!(
            out,
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {} |",
            ms(m[0]),
            ms(m[1]),
            ms(m[2]),
            ratio(m[0], m[1]),
            ms(m[3]),
            ms(m[4]),
            ratio(m[3], m[4]),
            ms(m[5]),
        );
    }
    (out, ratios)
}

// ---------------------------------------------------------------- main

/// One traffic figure ("bulk": one and four streams; "short"; "ka") for
/// one row, added to its samples.
fn measure(p: &Peer, r: &mut Row, figure: &str, secs: f64) -> std::io::Result<()> {
    if figure == "bulk" {
        for (streams, key) in [(1, "bulk1"), (4, "bulk4")] {
            let (cpu0, busy0) = (cpu_seconds(p), cpu_jiffies());
            let t = Instant::now();
            let bps = bulk(p.port, streams, secs)?;
            let bytes = bps * t.elapsed().as_secs_f64();
            r.add(key, bps);
            if streams == 1 {
                r.add_busy("bulk", &busy0);
                if let (Some(c0), Some(c1)) = (cpu0, cpu_seconds(p)) {
                    r.add("cpu_per_gb", (c1 - c0) / (bytes / 1e9));
                }
            }
        }
        return Ok(());
    }
    type Load = fn(u16, usize, f64) -> std::io::Result<(f64, f64)>;
    let (load, workers, [rate_key, p99_key, cpu_key, cpu0_key]): (Load, usize, [&'static str; 4]) =
        match figure {
            "short" => (
                short_conns,
                4,
                ["short_rate", "short_p99", "short_cpu", "short_cpu0_us"],
            ),
            _ => (keepalive, 32, ["ka_rate", "ka_p99", "ka_cpu", "ka_cpu0_us"]),
        };
    let (cpu0, busy0, t) = (cpu_seconds(p), cpu_jiffies(), Instant::now());
    let (rate, p99) = load(p.port, workers, secs)?;
    let ops = rate * t.elapsed().as_secs_f64();
    let cpu0_s = r.add_busy(figure, &busy0);
    r.add(cpu0_key, cpu0_s * 1e6 / ops);
    r.add(rate_key, rate);
    r.add(p99_key, p99);
    // The proxy's CPU µs per operation.
    if let (Some(c0), Some(c1)) = (cpu0, cpu_seconds(p)) {
        r.add(cpu_key, (c1 - c0) * 1e6 / ops);
    }
    Ok(())
}

/// `--reap PROGRAM ARGS...`: run PROGRAM as a child subreaper, so the
/// processes it orphans are reaped here the moment they exit; exit with it.
fn reap(program: &str, args: &[String]) -> ! {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes an integer flag.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: the closure calls only prctl, which is async-signal-safe: the
    // relay dies with this reaper (the bench kills the reaper).
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let main = match cmd.spawn() {
        Ok(c) => c.id() as libc::pid_t,
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::exit(127);
        }
    };
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to the status integer it is given.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == main || pid < 0 {
            std::process::exit(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                1
            });
        }
    }
}

/// Rounds and seconds per figure, from LOWPORT_BENCH_QUICK,
/// LOWPORT_BENCH_ROUNDS and LOWPORT_BENCH_SECS.
fn rounds_and_secs() -> (usize, f64) {
    // Five short rounds rather than three long ones: the median of five is
    // far steadier on a 2-core VM, for the same total time.
    let (mut rounds, mut secs) = if quick() { (1, 0.5) } else { (5, 2.0) };
    // LOWPORT_BENCH_ROUNDS=15: more rounds, for a narrower spread.
    if let Some(n) = std::env::var("LOWPORT_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        rounds = n;
    }
    // LOWPORT_BENCH_SECS=10: longer figures, to attach a profiler.
    if let Some(s) = std::env::var("LOWPORT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        secs = s;
    }
    (rounds, secs)
}

/// The date, CPUs and kernel, for a report's first line.
fn machine_line() -> String {
    // Online CPUs, not this process's share (it is pinned to CPU 0 by now).
    // SAFETY: sysconf has no memory preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!(
        "{} — {cpus} CPUs ({cpu}), kernel {}",
        run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).trim(),
        run("uname", &["-r"]).trim()
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, program, rest @ ..] = &args[..] {
        if flag == "--reap" {
            reap(program, rest);
        }
    }
    // `cargo test` builds benches too and may run them with --bench-less
    // args; only run when asked to benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "benches/peers: run as root (it makes a network namespace and installs rules in it)"
        );
        std::process::exit(2);
    }
    ensure_packages();
    raise_nofile();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ns = Netns::enter_new("traffic");
    pin_self_to_cpu0();
    start_backend();
    let (rounds, secs) = rounds_and_secs();
    if udp::only() {
        println!("{}", udp::run(rounds, secs));
        remove_cgroups();
        remove_tmp();
        let _ = Command::new(lowport_bin())
            .args(["rules", "remove"])
            .output();
        return;
    }
    let mut peers = start_peers();
    // LOWPORT_BENCH_ONLY=name,name: only these rows (and direct), for profiling.
    if let Ok(only) = std::env::var("LOWPORT_BENCH_ONLY") {
        for p in peers.iter_mut().skip(1) {
            if !only.split(',').any(|o| p.name.starts_with(o.trim())) {
                p.skipped = Some("not selected (LOWPORT_BENCH_ONLY)".into());
            }
        }
    }

    // Correctness first, once per row: what each relay does with a
    // half-close and with a reset.
    let mut checks = String::from(
        "| peer | half-close passed through | backend reset reaches the client as a reset |\n|---|---|---|\n",
    );
    for p in &peers {
        if p.skipped.is_some() {
            continue;
        }
        let show = |r: Result<(), String>| match r {
            Ok(()) => "yes".to_owned(),
            Err(why) => format!("no: {why}"),
        };
        let (half, reset) = with_rules(p, || (passes_half_close(p.port), passes_reset(p.port)));
        let _ = writeln!(checks, "| {} | {} | {} |", p.name, show(half), show(reset));
    }
    let mut rows = vec![Row::default(); peers.len()];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        // Each round starts one row further on and every other round runs
        // backwards, so no row always comes first or follows the same one.
        let n = peers.len();
        let order: Vec<usize> = (0..n).map(|i| (i + round) % n).collect();
        let order: Vec<usize> = if round % 2 == 1 {
            order.into_iter().rev().collect()
        } else {
            order
        };
        // Figure by figure, every row in turn: a figure's rows run within
        // seconds of each other, so a round's ratios compare like with like
        // (row by row, a figure's rows were up to a minute apart).
        for fig in ["bulk", "short", "ka"] {
            if !figure(fig) {
                continue;
            }
            for &i in &order {
                let (p, r) = (&peers[i], &mut rows[i]);
                if p.skipped.is_some() || r.error.is_some() {
                    continue;
                }
                if let Err(e) = with_rules(p, || measure(p, r, fig, secs)) {
                    r.error = Some(format!("failed: {e}"));
                }
            }
        }
    }
    // Idle memory: once, after the traffic rounds (connections left by
    // them have drained by then).
    for (p, r) in peers.iter().zip(rows.iter_mut()) {
        if p.skipped.is_some() || r.error.is_some() || !figure("idle") {
            continue;
        }
        for (n, keys, open_key) in [
            (1000usize, ["pss1k", "kern1k", "mkern1k", "fd1k"], None),
            (3000, ["pss3k", "kern3k", "mkern3k", "fd3k"], Some("open3k")),
        ] {
            match with_rules(p, || idle(p, n)) {
                Ok(m) => {
                    if !p.kernel && p.child.is_some() {
                        r.add(keys[0], m.pss);
                        r.add(keys[3], m.fds);
                        // Without a relay the client and the backend share
                        // CPU 0, and the client's connect loop fills the
                        // backend's accept queue before it is scheduled.
                        if let Some(k) = open_key {
                            r.add(k, m.open_secs);
                        }
                    }
                    if let Some(k) = m.relay_kernel {
                        r.add(keys[1], k);
                    }
                    r.add(keys[2], m.machine_kernel);
                }
                Err(e) => {
                    r.add(keys[2], f64::NAN);
                    eprintln!("{}: {n} idle connections: {e}", p.name);
                }
            }
        }
    }

    let gbs = |v: f64| format!("{:.2} GB/s", v / 1e9);
    let num = |v: f64| format!("{v:.0}");
    let us = |v: f64| format!("{v:.0} µs");
    let us1 = |v: f64| format!("{v:.1} µs");
    let kib = |v: f64| format!("{v:.1} KiB");
    let secs_fmt = |v: f64| format!("{v:.3} s");
    let fds = |v: f64| format!("{v:.1}");
    let traffic = table(
        &peers,
        &rows,
        &[
            Column {
                key: "bulk1",
                title: "bulk, 1 stream",
                fmt: gbs,
                ratio: true,
            },
            Column {
                key: "bulk4",
                title: "bulk, 4 streams",
                fmt: gbs,
                ratio: true,
            },
            Column {
                key: "cpu_per_gb",
                title: "proxy CPU s/GB",
                fmt: secs_fmt,
                ratio: false,
            },
            Column {
                key: "short_rate",
                title: "short conn/s",
                fmt: num,
                ratio: true,
            },
            Column {
                key: "short_p99",
                title: "short p99",
                fmt: us,
                ratio: true,
            },
            Column {
                key: "short_cpu",
                title: "proxy CPU µs/conn",
                fmt: us1,
                ratio: false,
            },
            Column {
                key: "ka_rate",
                title: "keep-alive req/s",
                fmt: num,
                ratio: true,
            },
            Column {
                key: "ka_p99",
                title: "keep-alive p99",
                fmt: us,
                ratio: true,
            },
            Column {
                key: "ka_cpu",
                title: "proxy CPU µs/req",
                fmt: us1,
                ratio: false,
            },
        ],
    );
    let pct = |v: f64| format!("{v:.0}%");
    let busy = table(
        &peers,
        &rows,
        &[
            Column {
                key: "bulk_busy0",
                title: "bulk 1 stream: CPU 0",
                fmt: pct,
                ratio: false,
            },
            Column {
                key: "bulk_busy1",
                title: "CPU 1",
                fmt: pct,
                ratio: false,
            },
            Column {
                key: "short_busy0",
                title: "short: CPU 0",
                fmt: pct,
                ratio: false,
            },
            Column {
                key: "short_busy1",
                title: "CPU 1",
                fmt: pct,
                ratio: false,
            },
            Column {
                key: "short_cpu0_us",
                title: "CPU 0 µs/conn",
                fmt: us1,
                ratio: true,
            },
            Column {
                key: "ka_busy0",
                title: "keep-alive: CPU 0",
                fmt: pct,
                ratio: false,
            },
            Column {
                key: "ka_busy1",
                title: "CPU 1",
                fmt: pct,
                ratio: false,
            },
            Column {
                key: "ka_cpu0_us",
                title: "CPU 0 µs/req",
                fmt: us1,
                ratio: true,
            },
        ],
    );
    let memory = table(
        &peers,
        &rows,
        &[
            Column {
                key: "pss1k",
                title: "proxy PSS/conn @1k",
                fmt: kib,
                ratio: false,
            },
            Column {
                key: "pss3k",
                title: "proxy PSS/conn @3k",
                fmt: kib,
                ratio: false,
            },
            Column {
                key: "kern1k",
                title: "proxy kernel/conn @1k",
                fmt: kib,
                ratio: false,
            },
            Column {
                key: "kern3k",
                title: "proxy kernel/conn @3k",
                fmt: kib,
                ratio: false,
            },
            Column {
                key: "mkern1k",
                title: "machine kernel/conn @1k",
                fmt: kib,
                ratio: true,
            },
            Column {
                key: "mkern3k",
                title: "machine kernel/conn @3k",
                fmt: kib,
                ratio: true,
            },
            Column {
                key: "open3k",
                title: "opening the 3k",
                fmt: secs_fmt,
                ratio: false,
            },
            Column {
                key: "fd1k",
                title: "proxy fds/conn",
                fmt: fds,
                ratio: false,
            },
        ],
    );
    for p in &mut peers {
        if let Some(c) = &mut p.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    // The UDP rows, after the TCP relays have gone (their own report).
    if figure("udp") && std::env::var_os("LOWPORT_BENCH_ONLY").is_none() {
        udp::run(rounds, secs);
    }
    remove_cgroups();
    remove_tmp();
    let _ = Command::new(lowport_bin())
        .args(["rules", "remove"])
        .output();
    let (rules, rule_ratios) = if figure("rules") {
        // A fresh namespace: in the one the traffic figures ran in (with
        // the conntrack entries and sockets of millions of connections),
        // `nft -f` of one mapping took 156 ms against 16 ms in a fresh one,
        // which timed the namespace, not the tools.
        let _rules_ns = Netns::enter_new("rules");
        rule_install_speed(if quick() { 3 } else { 11 })
    } else {
        (
            "not measured (LOWPORT_BENCH_FIGURES)\n".to_owned(),
            Vec::new(),
        )
    };
    let targets = targets(&peers, &rows, TARGETS, &rule_ratios);

    let kernel = run("uname", &["-r"]);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let date = run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let report = format!(
        "# lowport peer benchmark\n\n{} — {} CPUs ({}), kernel {}; {} round(s) of {:.1} s per figure, medians; \
         load generator and backend on CPU 0, each proxy alone on CPU 1; loopback inside a private network namespace. \
         Ratios are to \"direct\" (client straight to the backend).\n\n\
         ## Targets\n\n\
         lowport against the best peer on each figure (the best by median), and the same ratio round by round. \
         Round by round: the middle half of the rounds' ratios, and in brackets all of them. \
         Where the middle half straddles 1.00×, this machine does not tell the two apart.\n\n{targets}\n\
         ## Traffic\n\n{traffic}\n\
         ## Where the limit is\n\n\
         Each CPU's busy share during the figure. CPU 0 runs the load generator (one event loop), the backend (one event loop) \
         and the kernel's work for their sockets, including the receive path of every segment they send; CPU 1 runs the proxy \
         and the kernel's work for the segments it sends. Where CPU 0 is near 100% in every relay row, the rate is set there, \
         not by the relay; what a relay then changes is CPU 0's cost per connection or request (\"CPU 0 µs\"), through how its \
         deliveries wake the client and the backend.\n\n{busy}\n\
         ## Idle connections\n\nPer connection, after 1000 and 3000 idle connections (each moved one byte first). \
         Proxy kernel memory: what the kernel charged to the relay's own cgroup (memory controller) — the sockets it accepted and opened, their files, its epoll entries and pipes, its processes' stacks and page tables; none of the client's and backend's; the targets read this. \
         Machine kernel memory: the slab caches of sockets, files, epoll entries, pipes, conntrack and kmalloc, TCP buffers, kernel stacks and page tables, as a machine-wide delta — it includes the client's and backend's sockets and every other allocation on the machine, so compare rows, not absolutes. \
         Opening the 3k: seconds to open the 3000 connections one after another; a client waits only while its relay's listen queue is full, so this is what accepting costs a relay that already holds many connections.\n\n{memory}\n\
         ## What each relay does with a half-close and a reset\n\n{checks}\n\
         ## Rule installation (process start to exit, median)\n\n\
         In a fresh namespace. \"lowport rules apply\", nft and iptables-restore start with no rules (as at boot); \
         \"replacing\" applies a second rule set with every target changed over the first; \"unchanged\" applies the same rules again. \
         lowport also reads the rules back and compares them after each change; nft and iptables-restore do not.\n\n{rules}",
        date.trim(),
        cpus,
        cpu,
        kernel.trim(),
        rounds,
        secs
    );
    println!("{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    if std::fs::create_dir_all(&out).is_ok() {
        let name = if quick() { "quick.md" } else { "latest.md" };
        let _ = std::fs::write(out.join(name), &report);
        eprintln!("written to benches/results/{name}");
    }
}

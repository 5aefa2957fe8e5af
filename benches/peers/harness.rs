//! The bench's ground: its network namespace, CPU pinning, the cgroups each
//! relay runs in, and the accounting read from them and from /proc (a
//! relay's CPU time, memory and file descriptors; each CPU's busy time).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::peers::Peer;

/// `LOWPORT_BENCH_FIGURES=short,ka`: measure only these figures (bulk,
/// short, ka, idle, rules), to attach a profiler to one kind of load.
pub(crate) fn figure(name: &str) -> bool {
    std::env::var("LOWPORT_BENCH_FIGURES").map_or(true, |f| f.split(',').any(|x| x.trim() == name))
}

pub(crate) fn quick() -> bool {
    std::env::var_os("LOWPORT_BENCH_QUICK").is_some()
}

pub(crate) fn pin_self_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it; the
    // call only changes this process's affinity (threads inherit it).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

pub(crate) fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on a stack struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(1 << 20);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// The namespace the whole run happens in; deleted on drop.
pub(crate) struct Netns(String);

impl Netns {
    /// Make a namespace and move the calling thread into it; processes it
    /// starts from then on live there too.
    pub(crate) fn enter_new(tag: &str) -> Netns {
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

pub(crate) fn run(cmd: &str, args: &[&str]) -> String {
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

pub(crate) fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn ensure_packages() {
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
        .filter(|(cmd, _)| !crate::udp::only() || ["socat", "nginx", "nft"].contains(cmd))
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

/// A relay's command, pinned to CPU 1 and started in the peer's own
/// cgroups (`peer_cgroups(port)`), so everything it forks is measured with
/// it — redir's connection processes detach from their parent, and forked
/// children that exit take their CPU time along unless someone waits for
/// them.
pub(crate) fn taskset_cpu1(program: &str, port: u16) -> Command {
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
pub(crate) enum Hierarchy {
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
pub(crate) fn bench_cgroup(h: Hierarchy) -> Option<&'static Path> {
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
pub(crate) fn peer_cgroup(h: Hierarchy, port: u16) -> Option<PathBuf> {
    let dir = bench_cgroup(h)?.join(port.to_string());
    (dir.is_dir() || std::fs::create_dir(&dir).is_ok()).then_some(dir)
}

pub(crate) fn peer_cgroups(port: u16) -> Vec<PathBuf> {
    [Hierarchy::Unified, Hierarchy::Memory]
        .into_iter()
        .filter_map(|h| peer_cgroup(h, port))
        .collect()
}

/// Kill whatever is left in this run's cgroups and remove them.
pub(crate) fn remove_cgroups() {
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

pub(crate) fn write_tmp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowport-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write tmp");
    p
}

/// Remove this run's directory of config files (write_tmp).
pub(crate) fn remove_tmp() {
    let dir = std::env::temp_dir().join(format!("lowport-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(dir);
}

pub(crate) fn lowport_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lowport"))
}
// ---------------------------------------------------------------- process stats

/// Every pid in the process tree under `root` (socat and redir fork).
pub(crate) fn tree(root: u32) -> Vec<u32> {
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
pub(crate) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// The relay's processes: those in its cgroup, or else the tree under its
/// pid; none for the kernel rows.
pub(crate) fn procs(p: &Peer) -> Vec<u32> {
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
pub(crate) fn cpu_seconds(p: &Peer) -> Option<f64> {
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

pub(crate) fn pss_kib(p: &Peer) -> u64 {
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
pub(crate) fn relay_kernel_kib(p: &Peer) -> Option<u64> {
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

pub(crate) fn fd_count(p: &Peer) -> usize {
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
pub(crate) fn kernel_kib() -> u64 {
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

/// Clock ticks per second, the unit of /proc's CPU times.
pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// One CPU's time from /proc/stat, in clock ticks: busy (user, system,
/// interrupts) and the total the guest had (without steal).
#[derive(Default, Clone, Copy)]
pub(crate) struct CpuTime {
    pub(crate) busy: u64,
    pub(crate) total: u64,
}

/// CPU 0 (load generator, backend and the kernel work their sockets do)
/// and CPU 1 (the proxy, and the kernel work its sockets do).
pub(crate) fn cpu_jiffies() -> [CpuTime; 2] {
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

/// `--reap PROGRAM ARGS...`: run PROGRAM as a child subreaper, so the
/// processes it orphans are reaped here the moment they exit; exit with it.
pub(crate) fn reap(program: &str, args: &[String]) -> ! {
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
pub(crate) fn rounds_and_secs() -> (usize, f64) {
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

/// The order the rows run in, in round `round` of `n` rows: each round
/// starts one row further on and every other round runs backwards, so no
/// row always comes first or follows the same one.
pub(super) fn round_order(n: usize, round: usize) -> Vec<usize> {
    let order = (0..n).map(|i| (i + round) % n);
    if round % 2 == 1 {
        order.rev().collect()
    } else {
        order.collect()
    }
}

//! UDP rows: direct, kernel DNAT (lowport's rules with a `/udp` mapping),
//! `lowport proxy` with a UDP mapping, nginx stream (`listen … udp`) and
//! socat (`UDP4-LISTEN`, fork), interleaved figure by figure as the TCP rows
//! are. The load generator and the sink run on CPU 0, each relay alone on
//! CPU 1. `LOWPORT_BENCH_ONLY=udp` runs these rows alone; the report goes
//! to `benches/results/udp.md` (`udp-quick.md` with `LOWPORT_BENCH_QUICK`).

use super::{
    cpu_seconds, lowport_bin, p99_us, pss_kib, relay_kernel_kib, round_order, taskset_cpu1,
    write_tmp, Peer, Row, Target,
};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where the sink listens (the TCP backend has 9000/tcp).
const SINK_PORT: u16 = 9001;
/// Where the kernel DNAT row listens.
const DNAT_PORT: u16 = 10180;
/// The offered rate of the loss figure: 1,200-byte datagrams over 16 flows,
/// well below every relay's saturated rate on this machine (see the table).
const PACED_RATE: u64 = 20_000;
/// Idle flows opened for the memory figure.
const IDLE_FLOWS: usize = 256;

/// Datagrams the sink received.
static SINK_COUNT: AtomicU64 = AtomicU64::new(0);

/// (size, flows, rate key, cpu key, CPU 0 and CPU 1 busy keys) of the
/// saturated figures.
type Blast = (usize, usize, &'static str, &'static str, [&'static str; 2]);
const BLASTS: [Blast; 4] = [
    (64, 1, "r64_1", "c64_1", ["b0_64_1", "b1_64_1"]),
    (64, 16, "r64_16", "c64_16", ["b0_64_16", "b1_64_16"]),
    (1200, 1, "r1200_1", "c1200_1", ["b0_1200_1", "b1_1200_1"]),
    (
        1200,
        16,
        "r1200_16",
        "c1200_16",
        ["b0_1200_16", "b1_1200_16"],
    ),
];

/// `LOWPORT_BENCH_ONLY=udp`: the UDP rows only.
pub(super) fn only() -> bool {
    std::env::var("LOWPORT_BENCH_ONLY").is_ok_and(|o| o.trim() == "udp")
}

/// The sink: counts every datagram; echoes those that start with `e` (the
/// request/response figure) to their sender.
fn start_sink() {
    let s = UdpSocket::bind(("127.0.0.1", SINK_PORT)).expect("UDP sink on 127.0.0.1:9001");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                SINK_COUNT.fetch_add(1, Ordering::Relaxed);
                if n > 0 && buf[0] == b'e' {
                    let _ = s.send_to(&buf[..n], from);
                }
            }
        }
    });
}

fn sink() -> u64 {
    SINK_COUNT.load(Ordering::Relaxed)
}

/// Install (or remove) lowport's rules with a UDP mapping for the kernel
/// DNAT row, in place only while that row is measured (conntrack would
/// otherwise see every other row's datagrams too).
fn dnat_rules(on: bool) {
    let mut cmd = Command::new(lowport_bin());
    if on {
        cmd.args([
            "-m",
            &format!("{DNAT_PORT}:{SINK_PORT}/udp"),
            "rules",
            "apply",
        ]);
    } else {
        cmd.args(["rules", "remove"]);
    }
    match cmd.output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "lowport rules {}: {}",
            if on { "apply" } else { "remove" },
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("lowport: {e}"),
    }
}

fn with_rules<T>(p: &Peer, f: impl FnOnce() -> T) -> T {
    if p.kernel {
        dnat_rules(true);
    }
    let out = f();
    if p.kernel {
        dnat_rules(false);
    }
    out
}

fn client(port: u16) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.connect(("127.0.0.1", port))?;
    Ok(s)
}

/// Send one datagram on `s` until the sink has it: the flow exists in the
/// relay (socat forks a process per flow, and loses what arrives while it
/// does). False after five tries.
fn open_flow(s: &UdpSocket, buf: &[u8]) -> bool {
    for _ in 0..5 {
        let before = sink();
        let _ = s.send(buf);
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            if sink() > before {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    false
}

fn flows(port: u16, n: usize, size: usize) -> std::io::Result<Vec<UdpSocket>> {
    let buf = vec![b'x'; size];
    (0..n)
        .map(|_| {
            let s = client(port)?;
            if !open_flow(&s, &buf) {
                return Err(std::io::Error::other("a flow did not reach the sink"));
            }
            Ok(s)
        })
        .collect()
}

/// Waits until the sink's count stops growing (the relay's queues drained).
fn drained() -> u64 {
    let mut last = sink();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = sink();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// Datagrams of `size` bytes over `n` flows as fast as this thread sends
/// them, for `secs`: (sent, received by the sink, seconds).
fn blast(port: u16, size: usize, n: usize, secs: f64) -> std::io::Result<(u64, u64, f64)> {
    let socks = flows(port, n, size)?;
    let buf = vec![b'x'; size];
    let c0 = drained();
    let t = Instant::now();
    let mut sent = 0u64;
    while t.elapsed().as_secs_f64() < secs {
        for s in &socks {
            for _ in 0..16 {
                if s.send(&buf).is_ok() {
                    sent += 1;
                }
            }
        }
    }
    let dt = t.elapsed().as_secs_f64();
    Ok((sent, drained() - c0, dt))
}

/// This namespace's UDP datagrams dropped at a full socket receive buffer
/// (`RcvbufErrors` of /proc/net/snmp, which is per network namespace).
fn rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Datagrams the sink's socket dropped (the `drops` column of
/// /proc/net/udp, per socket): tells the sink's drops from the relay's.
fn sink_drops() -> u64 {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let local = format!(":{SINK_PORT:04X}");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // The sink is bound, not connected: remote 00000000:0000.
            (f.get(1)?.ends_with(&local) && f.get(2)?.ends_with(":0000"))
                .then(|| f.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// 1,200-byte datagrams at PACED_RATE over 16 flows, sent a millisecond's
/// share at a time, for `secs`: the share lost, and the share dropped at a
/// full socket receive buffer (the relay's or the sink's: a receiver that
/// was not scheduled in time).
fn paced(port: u16, secs: f64) -> std::io::Result<(f64, f64, f64)> {
    let socks = flows(port, 16, 1200)?;
    let buf = vec![b'x'; 1200];
    let c0 = drained();
    let (e0, s0) = (rcvbuf_errors(), sink_drops());
    let t = Instant::now();
    let mut sent = 0u64;
    let mut k = 0usize;
    while t.elapsed().as_secs_f64() < secs {
        let due = (t.elapsed().as_secs_f64() * PACED_RATE as f64) as u64;
        while sent < due {
            if socks[k % socks.len()].send(&buf).is_ok() {
                sent += 1;
            }
            k += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let got = drained() - c0;
    let full = rcvbuf_errors() - e0;
    let at_sink = sink_drops() - s0;
    let sent = sent.max(1) as f64;
    Ok((
        1.0 - got as f64 / sent,
        full as f64 / sent,
        at_sink as f64 / sent,
    ))
}

/// One flow, 64-byte requests echoed by the sink, one at a time, for
/// `secs`: (p50, p99) of the round trip in µs (lost requests are not
/// counted).
fn request_response(port: u16, secs: f64) -> std::io::Result<(f64, f64)> {
    let s = client(port)?;
    let req = [b'e'; 64];
    let mut back = [0u8; 2048];
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let _ = s.send(&req);
    let _ = s.recv(&mut back);
    let mut lat = Vec::new();
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < secs {
        let t0 = Instant::now();
        s.send(&req)?;
        if s.recv(&mut back).is_ok() {
            lat.push(t0.elapsed());
        }
    }
    lat.sort_unstable();
    let p50 = lat
        .get(lat.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
    Ok((p50, p99_us(lat)))
}

fn start_peers() -> Vec<Peer> {
    let sink_addr = format!("127.0.0.1:{SINK_PORT}");
    let mut peers = vec![
        Peer {
            name: "direct",
            port: SINK_PORT,
            child: None,
            skipped: None,
            kernel: false,
            _tmp: None,
        },
        Peer {
            name: "kernel DNAT (lowport rules)",
            port: DNAT_PORT,
            child: None,
            skipped: None,
            kernel: true,
            _tmp: None,
        },
    ];
    let mut add = |name: &'static str, port: u16, started: Result<Child, String>| {
        let (child, skipped) = match started {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(e)),
        };
        peers.push(Peer {
            name,
            port,
            child,
            skipped,
            kernel: false,
            _tmp: None,
        });
    };
    let port = 10181;
    add(
        "lowport proxy",
        port,
        taskset_cpu1(lowport_bin().to_str().unwrap_or("lowport"), port)
            .args([
                "-q",
                "-m",
                &format!("127.0.0.1:{port}:{sink_addr}/udp"),
                "proxy",
            ])
            .spawn()
            .map_err(|e| e.to_string()),
    );
    let port = 10182;
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    add(
        "nginx stream (udp)",
        port,
        if !super::have("nginx") || !Path::new(module).exists() {
            Err("nginx with the stream module is not installed".into())
        } else {
            let dir = std::env::temp_dir().join(format!("lowport-bench-{}", std::process::id()));
            let cfg = write_tmp(
                "nginx-udp.conf",
                &format!(
                    "load_module {module};\nworker_processes 1;\nworker_rlimit_nofile 18000;\ndaemon off;\nmaster_process off;\npid {pid};\nerror_log stderr error;\nevents {{ worker_connections 8000; }}\nstream {{ server {{ listen 127.0.0.1:{port} udp; proxy_pass {sink_addr}; }} }}\n",
                    pid = dir.join("nginx-udp.pid").display()
                ),
            );
            taskset_cpu1("nginx", port)
                .arg("-c")
                .arg(&cfg)
                .arg("-p")
                .arg(&dir)
                .spawn()
                .map_err(|e| e.to_string())
        },
    );
    let port = 10183;
    add(
        "socat (UDP-LISTEN, fork)",
        port,
        if super::have("socat") {
            taskset_cpu1("socat", port)
                .args([
                    &format!("UDP4-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"),
                    &format!("UDP4:{sink_addr}"),
                ])
                .spawn()
                .map_err(|e| e.to_string())
        } else {
            Err("socat is not installed".into())
        },
    );
    // Wait until every started peer relays a datagram and its answer.
    for p in &mut peers {
        if p.skipped.is_some() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let up = with_rules(p, || {
            let Ok(s) = client(p.port) else { return false };
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut back = [0u8; 64];
            while Instant::now() < deadline {
                let _ = s.send(b"e-ready");
                if s.recv(&mut back).is_ok() {
                    return true;
                }
            }
            false
        });
        if !up {
            p.skipped = Some("did not relay a datagram within 5 s".into());
        }
    }
    peers
}

const TARGETS: &[Target] = &[
    Target {
        key: "r1200_1",
        title: "datagrams/s, 1,200 B, 1 flow",
        limit: 1.5,
        higher_is_better: true,
        fmt: super::fmt_num,
    },
    Target {
        key: "r1200_16",
        title: "datagrams/s, 1,200 B, 16 flows",
        limit: 1.5,
        higher_is_better: true,
        fmt: super::fmt_num,
    },
    Target {
        key: "c1200_1",
        title: "proxy CPU per datagram, 1,200 B, 1 flow",
        limit: 0.6,
        higher_is_better: false,
        fmt: fmt_cpu,
    },
    Target {
        key: "c1200_16",
        title: "proxy CPU per datagram, 1,200 B, 16 flows",
        limit: 0.6,
        higher_is_better: false,
        fmt: fmt_cpu,
    },
    Target {
        key: "c64_16",
        title: "proxy CPU per datagram, 64 B, 16 flows",
        limit: 0.6,
        higher_is_better: false,
        fmt: fmt_cpu,
    },
];

fn fmt_cpu(v: f64) -> String {
    format!("{v:.2} s/M")
}

/// The UDP rows, interleaved as the TCP rows are; returns the report,
/// also written to benches/results/udp.md.
pub(super) fn run(rounds: usize, secs: f64) -> String {
    start_sink();
    let mut peers = start_peers();
    let mut rows = vec![Row::default(); peers.len()];
    for round in 0..rounds {
        eprintln!("UDP round {}/{rounds}", round + 1);
        let order = round_order(peers.len(), round);
        for (size, nflows, rate_key, cpu_key, busy_keys) in BLASTS {
            for &i in &order {
                let (p, r) = (&peers[i], &mut rows[i]);
                if p.skipped.is_some() || r.error.is_some() {
                    continue;
                }
                let (cpu0, busy0) = (cpu_seconds(p), super::cpu_jiffies());
                match with_rules(p, || blast(p.port, size, nflows, secs)) {
                    Ok((_, got, dt)) => {
                        r.add(rate_key, got as f64 / dt);
                        // Each CPU's busy share: where the rate is set.
                        for ((key, b), n) in busy_keys.iter().zip(&busy0).zip(super::cpu_jiffies())
                        {
                            let total = n.total.saturating_sub(b.total);
                            if total > 0 {
                                let busy = n.busy.saturating_sub(b.busy) as f64;
                                r.add(key, 100.0 * busy / total as f64);
                            }
                        }
                        if let (Some(c0), Some(c1)) = (cpu0, cpu_seconds(p)) {
                            r.add(cpu_key, (c1 - c0) * 1e6 / got.max(1) as f64);
                        }
                    }
                    Err(e) => r.error = Some(format!("failed: {e}")),
                }
            }
        }
        for &i in &order {
            let (p, r) = (&peers[i], &mut rows[i]);
            if p.skipped.is_some() || r.error.is_some() {
                continue;
            }
            match with_rules(p, || paced(p.port, secs)) {
                Ok((loss, full, at_sink)) => {
                    r.add("loss", loss * 100.0);
                    r.add("loss_rcvbuf", full * 100.0);
                    r.add("loss_sink", at_sink * 100.0);
                }
                Err(e) => r.error = Some(format!("failed: {e}")),
            }
            match with_rules(p, || request_response(p.port, secs)) {
                Ok((p50, p99)) => {
                    r.add("rr_p50", p50);
                    r.add("rr_p99", p99);
                }
                Err(e) => r.error = Some(format!("failed: {e}")),
            }
        }
    }
    // Memory per idle flow: once, after the traffic rounds, for the relays.
    for (p, r) in peers.iter().zip(rows.iter_mut()) {
        if p.skipped.is_some() || r.error.is_some() || p.child.is_none() {
            continue;
        }
        std::thread::sleep(Duration::from_millis(300));
        let (pss0, k0) = (pss_kib(p), relay_kernel_kib(p));
        match flows(p.port, IDLE_FLOWS, 64) {
            Ok(held) => {
                std::thread::sleep(Duration::from_millis(300));
                let n = held.len() as f64;
                r.add("pss", (pss_kib(p) as f64 - pss0 as f64) / n);
                if let (Some(a), Some(b)) = (k0, relay_kernel_kib(p)) {
                    r.add("kern", (b as f64 - a as f64) / n);
                }
            }
            Err(e) => eprintln!("{}: {IDLE_FLOWS} idle flows: {e}", p.name),
        }
    }
    for p in &mut peers {
        if let Some(c) = &mut p.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    let num = |v: f64| format!("{v:.0}");
    let pct = |v: f64| format!("{v:.2}%");
    let pct0 = |v: f64| format!("{v:.0}%");
    let us = |v: f64| format!("{v:.0} µs");
    let kib = |v: f64| format!("{v:.1} KiB");
    let col = |key, title, fmt: fn(f64) -> String, ratio| super::Column {
        key,
        title,
        fmt,
        ratio,
    };
    let traffic = super::table(
        &peers,
        &rows,
        &[
            col("r64_1", "dgram/s 64 B ×1", num, true),
            col("r64_16", "dgram/s 64 B ×16", num, true),
            col("r1200_1", "dgram/s 1,200 B ×1", num, true),
            col("r1200_16", "dgram/s 1,200 B ×16", num, true),
            col("loss", "loss @20k/s", pct, false),
            col("loss_rcvbuf", "of it at a full rcvbuf", pct, false),
            col("loss_sink", "of it at the sink", pct, false),
            col("rr_p50", "req/resp p50", us, true),
            col("rr_p99", "req/resp p99", us, true),
        ],
    );
    let cost = super::table(
        &peers,
        &rows,
        &[
            col("c64_1", "CPU s/M dgram 64 B ×1", fmt_cpu, false),
            col("c64_16", "64 B ×16", fmt_cpu, false),
            col("c1200_1", "1,200 B ×1", fmt_cpu, false),
            col("c1200_16", "1,200 B ×16", fmt_cpu, false),
            col("pss", "proxy PSS/idle flow", kib, false),
            col("kern", "proxy kernel/idle flow", kib, false),
        ],
    );
    let busy = super::table(
        &peers,
        &rows,
        &[
            col("b0_64_1", "64 B ×1: CPU 0", pct0, false),
            col("b1_64_1", "CPU 1", pct0, false),
            col("b0_64_16", "64 B ×16: CPU 0", pct0, false),
            col("b1_64_16", "CPU 1", pct0, false),
            col("b0_1200_1", "1,200 B ×1: CPU 0", pct0, false),
            col("b1_1200_1", "CPU 1", pct0, false),
            col("b0_1200_16", "1,200 B ×16: CPU 0", pct0, false),
            col("b1_1200_16", "CPU 1", pct0, false),
        ],
    );
    let targets = super::targets(&peers, &rows, TARGETS, &[]);
    let lp_loss = peers
        .iter()
        .position(|p| p.name.starts_with("lowport"))
        .and_then(|i| rows[i].samples.get("loss").cloned())
        .unwrap_or_default();
    let loss_line = format!(
        "Zero loss below saturation (lowport, {PACED_RATE} datagrams/s of 1,200 B over 16 flows), each round: {} — held: {}\n",
        lp_loss
            .iter()
            .map(|v| format!("{v:.3}%"))
            .collect::<Vec<_>>()
            .join(", "),
        if !lp_loss.is_empty() && lp_loss.iter().all(|v| *v == 0.0) {
            "yes"
        } else {
            "no"
        }
    );
    let report = format!(
        "# lowport UDP peer benchmark\n\n{} — {} round(s) of {secs:.1} s per figure, medians; load generator (one thread) and \
         sink (one thread) on CPU 0, each relay alone on CPU 1; loopback inside a private network namespace. \
         Ratios in the tables are to \"direct\" (client straight to the sink).\n\n\
         Datagrams/s: what the sink received per second while one thread sent as fast as it could over 1 or 16 flows (a flow: \
         one client socket); the surplus is dropped at the relay's or the sink's socket. Loss: the share of {PACED_RATE} \
         datagrams/s (1,200 B, 16 flows, paced every 0.5 ms) that did not reach the sink. Request/response: one flow, 64 B \
         echoed by the sink, one at a time. Proxy CPU: the relay's cgroup CPU seconds per million datagrams received by the sink. \
         Idle flows: PSS and kernel memory charged to the relay's cgroup, per flow, after opening {IDLE_FLOWS} more flows \
         (one datagram each).\n\n\
         ## Targets (lowport ÷ best relay, nginx or socat)\n\n{targets}\n{loss_line}\n\
         ## Traffic\n\n{traffic}\n## Cost\n\n{cost}\n\
         ## Where the limit is\n\nEach CPU's busy share during the saturated figures. CPU 0 runs the sender, the sink \
         and the kernel's work for their sockets (for the kernel DNAT row, all of it: the translation runs in the sender's \
         softirq); CPU 1 runs the relay. Where CPU 0 is near 100% and CPU 1 is not, the rate is set by the load generator, \
         and the relay's CPU per datagram is the figure that compares relays.\n\n{busy}",
        super::machine_line(),
        rounds,
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    if std::fs::create_dir_all(&out).is_ok() {
        let name = if super::quick() {
            "udp-quick.md"
        } else {
            "udp.md"
        };
        let _ = std::fs::write(out.join(name), &report);
        eprintln!("written to benches/results/{name}");
    }
    report
}

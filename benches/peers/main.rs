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
//!
//! The files: this one runs the rounds (which row, which figure, in what
//! order); `harness.rs` the namespace, CPU pinning, cgroups and process
//! and CPU accounting; `load.rs` the backend and the load generators;
//! `peers.rs` each relay and its configuration; `report.rs` the tables and
//! the targets' ratios; `rules.rs` the rule-installation figure; `udp.rs`
//! the UDP rows.

mod harness;
mod load;
mod peers;
mod report;
mod rules;
mod udp;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use harness::{
    cpu_jiffies, cpu_seconds, ensure_packages, figure, lowport_bin, pin_self_to_cpu0, quick,
    raise_nofile, reap, remove_cgroups, remove_tmp, round_order, rounds_and_secs, run, Netns,
};
use load::{bulk, idle, keepalive, passes_half_close, passes_reset, short_conns, start_backend};
use peers::{start_peers, with_rules, Peer};
use report::{table, targets, Column, Row, TARGETS};
use rules::rule_install_speed;

// What udp.rs reads through `super::`.
use harness::{have, pss_kib, relay_kernel_kib, taskset_cpu1, write_tmp};
use load::p99_us;
use report::{fmt_num, machine_line, Target};

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
        let order = round_order(peers.len(), round);
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

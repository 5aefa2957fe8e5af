//! The report: each row's samples, the tables (medians, ratios to
//! "direct"), and the targets (lowport against the best peer).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::harness::{clock_ticks, cpu_jiffies, run, CpuTime};
use crate::peers::Peer;
use crate::rules::RuleRatio;

#[derive(Default, Clone)]
pub(crate) struct Row {
    pub(crate) samples: BTreeMap<&'static str, Vec<f64>>,
    pub(crate) error: Option<String>,
}

impl Row {
    pub(crate) fn add(&mut self, key: &'static str, v: f64) {
        self.samples.entry(key).or_default().push(v);
    }
    /// Each CPU's busy share (%) since `before`, under `figure`'s keys;
    /// returns CPU 0's busy seconds.
    pub(crate) fn add_busy(&mut self, figure: &str, before: &[CpuTime; 2]) -> f64 {
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
    pub(crate) fn median(&self, key: &str) -> Option<f64> {
        let mut v = self.samples.get(key)?.clone();
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Some(v[v.len() / 2])
    }
}

pub(crate) struct Column {
    pub(crate) key: &'static str,
    pub(crate) title: &'static str,
    pub(crate) fmt: fn(f64) -> String,
    /// Show the ratio to direct (metrics that direct has).
    pub(crate) ratio: bool,
}

pub(crate) fn table(peers: &[Peer], rows: &[Row], cols: &[Column]) -> String {
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
pub(crate) struct Target {
    pub(crate) key: &'static str,
    pub(crate) title: &'static str,
    /// The ratio lowport ÷ best peer must reach (at least, or at most).
    pub(crate) limit: f64,
    pub(crate) higher_is_better: bool,
    pub(crate) fmt: fn(f64) -> String,
}

pub(crate) fn fmt_gbs(v: f64) -> String {
    format!("{:.2} GB/s", v / 1e9)
}
pub(crate) fn fmt_num(v: f64) -> String {
    format!("{v:.0}")
}
pub(crate) fn fmt_us(v: f64) -> String {
    format!("{v:.0} µs")
}
pub(crate) fn fmt_s(v: f64) -> String {
    format!("{v:.3} s")
}
pub(crate) fn fmt_kib(v: f64) -> String {
    format!("{v:.1} KiB")
}

pub(crate) const TARGETS: &[Target] = &[
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
pub(crate) fn targets(
    peers: &[Peer],
    rows: &[Row],
    list: &[Target],
    rules: &[RuleRatio],
) -> String {
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

/// The date, CPUs and kernel, for a report's first line.
pub(crate) fn machine_line() -> String {
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

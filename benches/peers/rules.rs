//! The rule-installation figure: `lowport rules apply` against `nft -f` and
//! `iptables-restore` of the same rules, in a fresh namespace.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::harness::{lowport_bin, write_tmp};

pub(crate) fn time_cmd(cmd: &mut Command) -> Option<f64> {
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

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// lowport ÷ nft -f for one rule-set size: from nothing, and replacing.
pub(crate) struct RuleRatio {
    pub(crate) mappings: usize,
    pub(crate) from_nothing: Option<f64>,
    pub(crate) replacing: Option<f64>,
}

pub(crate) fn rule_install_speed(rounds: usize) -> (String, Vec<RuleRatio>) {
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

//! The iptables backend: the same [`RuleSet`] as the nftables backend,
//! rendered as `iptables-restore --noflush` input (and `ip6tables-restore`
//! for IPv6), for hosts that keep their firewall in iptables.
//!
//! lowport owns four chains and touches nothing else but the one jump rule
//! that reaches each:
//!
//! | table | chain                 | reached from (position 1) | holds                    |
//! |-------|-----------------------|---------------------------|--------------------------|
//! | nat   | `LOWPORT-PREROUTING`  | `PREROUTING`              | remote clients' DNAT     |
//! | nat   | `LOWPORT-OUTPUT`      | `OUTPUT`                  | local clients' DNAT      |
//! | nat   | `LOWPORT-POSTROUTING` | `POSTROUTING`             | masquerade, remote targets |
//! | raw   | `LOWPORT-GUARD`       | `PREROUTING` (IPv4 only)  | the 127.0.0.0/8 guard     |
//!
//! Each restore input has one `*table … COMMIT` block per table, so each
//! table changes atomically: a restore the kernel (or the parser) rejects
//! changes nothing in that table. IPv4 and IPv6 are separate restores, and
//! raw is committed before nat: when a later block is rejected, apply puts
//! back every table that changed from what it read before (its chains,
//! their rules as `iptables-save` printed them, and the jumps), so the
//! previous rules keep serving.
//! A chain declaration (`:LOWPORT-OUTPUT - [0:0]`) creates the chain or, in
//! `--noflush` mode, empties it; old jumps are deleted by their exact spec
//! as read from `iptables-save`, then the new jump is inserted at position 1.
//! Remove deletes the jumps, then flushes and deletes the chains, and sends
//! nothing at all when there is nothing of lowport's left.
//!
//! Rules carry the comment `NAME [N]`: the mapping's name, and the rule's
//! position in the [`RuleSet`]. The position is what lets [`Backend::list`]
//! rebuild the exact `RuleSet` from two separate kernels' tables (IPv4 and
//! IPv6): a rule for both families is the same position in both.
//!
//! Two flavours of the tools exist: `iptables-nft` (rules in nf_tables,
//! Debian's default) and `iptables-legacy` (the old x_tables). They are
//! different kernels' tables, so the flavour must be the one the host's
//! other rules use; see [`IptablesFlavor::detect`].
//!
//! This file runs the tools and holds the backend; `parse` reads
//! `iptables-save` output, `render` writes the restore input, `decode`
//! rebuilds the [`RuleSet`] from what was read.

use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::process::{Command, Stdio};

mod decode;
mod parse;
mod render;

use self::decode::decode_states;
use self::parse::{parse_save, FamilyState, TableState};
use self::render::render_rollback;
use super::plan::{Family, RuleSet};
use super::{Backend, FirewallError};

/// Chain for remote clients (nat `PREROUTING`).
pub const CHAIN_PREROUTING: &str = "LOWPORT-PREROUTING";
/// Chain for clients on this host (nat `OUTPUT`).
pub const CHAIN_OUTPUT: &str = "LOWPORT-OUTPUT";
/// Chain for the masquerade of remote targets (nat `POSTROUTING`).
pub const CHAIN_POSTROUTING: &str = "LOWPORT-POSTROUTING";
/// Chain for the loopback guard (raw `PREROUTING`, IPv4).
pub const CHAIN_GUARD: &str = "LOWPORT-GUARD";
/// Every chain name lowport's own chains start with.
const CHAIN_PREFIX: &str = "LOWPORT-";
/// Comment on the jump rules, so a person reading `iptables -S` sees why they are there.
const JUMP_COMMENT: &str = "lowport";
/// Comment on the guard rule.
const GUARD_COMMENT: &str = "lowport loopback guard";

/// Environment variable that forces the flavour: `nft` or `legacy`.
pub const FLAVOR_ENV: &str = "LOWPORT_IPTABLES";

/// Which iptables implementation the tools talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesFlavor {
    /// `iptables-nft`: iptables syntax, rules kept in nf_tables.
    Nft,
    /// `iptables-legacy`: the x_tables kernel interface.
    Legacy,
}

impl fmt::Display for IptablesFlavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IptablesFlavor::Nft => "nft",
            IptablesFlavor::Legacy => "legacy",
        })
    }
}

impl IptablesFlavor {
    /// The flavour to use on this host, in this order:
    /// 1. `LOWPORT_IPTABLES=nft|legacy`, when set;
    /// 2. the flavour that already holds lowport's chains (so `remove` and
    ///    `show` find them);
    /// 3. legacy, when legacy NAT rules are in use (the host's other NAT
    ///    rules are there, and precedence between the two is surprising);
    /// 4. what `iptables --version` says the host's default is;
    /// 5. nft.
    pub fn detect() -> Result<IptablesFlavor, FirewallError> {
        if let Some(v) = std::env::var_os(FLAVOR_ENV) {
            return match v.to_str() {
                Some("nft") => Ok(IptablesFlavor::Nft),
                Some("legacy") => Ok(IptablesFlavor::Legacy),
                _ => Err(FirewallError::Other(format!(
                    "{FLAVOR_ENV}={} is not valid; use nft or legacy",
                    v.to_string_lossy()
                ))),
            };
        }
        for flavor in [IptablesFlavor::Legacy, IptablesFlavor::Nft] {
            if flavor.holds_lowport_chains() {
                return Ok(flavor);
            }
        }
        if legacy_nat_in_use() {
            return Ok(IptablesFlavor::Legacy);
        }
        let version = Command::new(super::system_program("iptables"))
            .arg("--version")
            .output();
        match version {
            Ok(out) if String::from_utf8_lossy(&out.stdout).contains("legacy") => {
                Ok(IptablesFlavor::Legacy)
            }
            _ => Ok(IptablesFlavor::Nft),
        }
    }

    /// The tool for `family`: `iptables-nft-restore`, `ip6tables-legacy-save`…
    fn tool(self, family: Family, action: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}-{self}-{action}")
    }

    /// Does this flavour hold any of lowport's chains? Never loads legacy
    /// tables that are not there yet (reading one would create it).
    pub fn holds_lowport_chains(self) -> bool {
        [Family::V4, Family::V6].into_iter().any(|family| {
            ["nat", "raw"].into_iter().any(|table| {
                if self == IptablesFlavor::Legacy && !legacy_table_loaded(family, table) {
                    return false;
                }
                matches!(save(self, family, table), Ok(text) if text.lines().any(|l| l.starts_with(&format!(":{CHAIN_PREFIX}"))))
            })
        })
    }
}

/// Is a legacy (x_tables) table registered in this network namespace?
/// Read from `/proc/thread-self/net/ip{,6}_tables_names`, which lists only
/// tables that exist, so asking never creates one. (`/proc/net` is the
/// namespace of the process's main thread, not of a thread that entered
/// another one.)
pub fn legacy_table_loaded(family: Family, table: &str) -> bool {
    let path = match family {
        Family::V4 => "/proc/thread-self/net/ip_tables_names",
        Family::V6 => "/proc/thread-self/net/ip6_tables_names",
    };
    std::fs::read_to_string(path).is_ok_and(|t| t.lines().any(|l| l.trim() == table))
}

/// Are legacy iptables NAT rules in use here (a legacy nat table with at
/// least one rule that is not lowport's)?
pub fn legacy_nat_in_use() -> bool {
    [Family::V4, Family::V6].into_iter().any(|family| {
        legacy_table_loaded(family, "nat")
            && save(IptablesFlavor::Legacy, family, "nat").is_ok_and(|text| {
                text.lines()
                    .any(|l| l.starts_with("-A ") && !l.contains(CHAIN_PREFIX))
            })
    })
}

/// `rules watch` with iptables-legacy, which sends no notifications: the
/// (entry count, size in bytes) of the legacy nat and raw tables of both
/// families, `None` for a table that is not loaded (asking would load it).
/// One `getsockopt(IPT_SO_GET_INFO)` each, no process: any rule added,
/// deleted or changed changes the size or the count, and only then are
/// the rules read in full.
pub fn legacy_table_sizes() -> Vec<Option<(u32, u32)>> {
    let mut sizes = Vec::new();
    for family in [Family::V4, Family::V6] {
        for table in ["nat", "raw"] {
            let size = legacy_table_loaded(family, table)
                .then(|| legacy_table_info(family, table).ok())
                .flatten();
            sizes.push(size);
        }
    }
    sizes
}

/// `struct ipt_getinfo` (the same layout as `ip6t_getinfo`).
#[repr(C)]
struct XtGetInfo {
    name: [u8; 32],
    valid_hooks: u32,
    hook_entry: [u32; 5],
    underflow: [u32; 5],
    num_entries: u32,
    size: u32,
}

fn legacy_table_info(family: Family, table: &str) -> io::Result<(u32, u32)> {
    /// `IPT_SO_GET_INFO` and `IP6T_SO_GET_INFO`: `IPT_BASE_CTL` (64) + 0.
    const SO_GET_INFO: libc::c_int = 64;
    let (domain, level) = match family {
        Family::V4 => (libc::AF_INET, libc::IPPROTO_IP),
        Family::V6 => (libc::AF_INET6, libc::IPPROTO_IPV6),
    };
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut info = XtGetInfo {
        name: [0; 32],
        valid_hooks: 0,
        hook_entry: [0; 5],
        underflow: [0; 5],
        num_entries: 0,
        size: 0,
    };
    let n = table.len().min(31);
    info.name[..n].copy_from_slice(&table.as_bytes()[..n]);
    let mut len = std::mem::size_of::<XtGetInfo>() as libc::socklen_t;
    // SAFETY: the fd is our socket; the pointer and length describe `info`,
    // a repr(C) copy of the kernel's struct, which the kernel fills in.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            level,
            SO_GET_INFO,
            (&mut info as *mut XtGetInfo).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((info.num_entries, info.size))
}

/// `iptables-save -t TABLE` of one flavour and family.
pub fn save(flavor: IptablesFlavor, family: Family, table: &str) -> io::Result<String> {
    let tool = flavor.tool(family, "save");
    let out = Command::new(super::system_program(&tool))
        .args(["-t", table])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {tool}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{tool} -t {table} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The iptables backend, for one flavour.
#[derive(Debug, Clone)]
pub struct Iptables {
    flavor: IptablesFlavor,
    /// Tests only: make the next apply's restore input for this family
    /// invalid.
    reject_next_restore: Option<Family>,
}

impl Iptables {
    /// The backend for an explicit flavour.
    pub fn new(flavor: IptablesFlavor) -> Iptables {
        Iptables {
            flavor,
            reject_next_restore: None,
        }
    }

    /// For tests: the next `apply` sends its IPv4 restore input with one
    /// more rule, in the nat table, that jumps to a chain that does not
    /// exist, so that iptables-restore rejects the table's COMMIT.
    #[doc(hidden)]
    pub fn reject_next_restore_for_tests(&mut self) {
        self.reject_next_restore = Some(Family::V4);
    }

    /// For tests: like [`Iptables::reject_next_restore_for_tests`], for the
    /// IPv6 input, which is restored after the IPv4 one has been committed.
    #[doc(hidden)]
    pub fn reject_next_ipv6_restore_for_tests(&mut self) {
        self.reject_next_restore = Some(Family::V6);
    }

    /// The backend for the flavour [`IptablesFlavor::detect`] picks.
    pub fn detect() -> Result<Iptables, FirewallError> {
        Ok(Iptables::new(IptablesFlavor::detect()?))
    }

    /// The flavour this backend drives.
    pub fn flavor(&self) -> IptablesFlavor {
        self.flavor
    }

    /// The families this host has: IPv6 only when the kernel has it.
    fn families() -> Vec<Family> {
        if std::path::Path::new("/proc/sys/net/ipv6").exists() {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }

    fn tables(family: Family) -> &'static [&'static str] {
        match family {
            Family::V4 => &["raw", "nat"],
            // The guard is for 127.0.0.0/8 and route_localnet, both IPv4-only.
            Family::V6 => &["nat"],
        }
    }

    fn read_state(&self, family: Family) -> io::Result<FamilyState> {
        let mut state = FamilyState::default();
        for &table in Self::tables(family) {
            if self.flavor == IptablesFlavor::Legacy && !legacy_table_loaded(family, table) {
                continue;
            }
            let parsed = parse_save(&save(self.flavor, family, table)?);
            match table {
                "raw" => state.raw = parsed,
                _ => state.nat = parsed,
            }
        }
        Ok(state)
    }

    fn restore(&self, family: Family, input: &str) -> io::Result<()> {
        let tool = self.flavor.tool(family, "restore");
        let mut child = Command::new(super::system_program(&tool))
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {tool}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "{tool} -w --noflush rejected the input ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Put back what `previous` says each family held, where it changed.
    fn roll_back(&self, previous: &[(Family, FamilyState)]) -> io::Result<()> {
        for (family, before) in previous {
            let now = self.read_state(*family)?;
            if now == *before {
                continue;
            }
            let input = render_rollback(before, &now);
            tracing::debug!(%family, input = %input, "iptables-restore (rolling back)");
            self.restore(*family, &input)?;
        }
        Ok(())
    }

    fn states(&self) -> io::Result<Vec<(Family, FamilyState)>> {
        Self::families()
            .into_iter()
            .map(|f| Ok((f, self.read_state(f)?)))
            .collect()
    }
}

/// For fuzzing: parse `iptables-save` output as if it were each table of
/// each family, and decode what lowport would find there. Any input gives
/// an answer, never a panic.
#[doc(hidden)]
pub fn decode_save_for_fuzzing(
    v4_nat: &str,
    v4_raw: &str,
    v6_nat: &str,
) -> Result<Option<RuleSet>, String> {
    let states = vec![
        (
            Family::V4,
            FamilyState {
                nat: parse_save(v4_nat),
                raw: parse_save(v4_raw),
            },
        ),
        (
            Family::V6,
            FamilyState {
                nat: parse_save(v6_nat),
                raw: TableState::default(),
            },
        ),
    ];
    decode_states(&states).map_err(|e| e.to_string())
}

/// For fuzzing and its seeds: what `apply` would send to an empty host,
/// per family.
#[doc(hidden)]
pub fn restore_input_for_fuzzing(rules: &RuleSet) -> Vec<(Family, String)> {
    let states: Vec<(Family, FamilyState)> = [Family::V4, Family::V6]
        .into_iter()
        .map(|f| (f, FamilyState::default()))
        .collect();
    Iptables::new(IptablesFlavor::Nft).render_all(rules, &states)
}

fn rejected(e: io::Error) -> FirewallError {
    FirewallError::BatchRejected(e)
}

impl Backend for Iptables {
    fn place(&self) -> &'static str {
        "chains LOWPORT-* of the nat and raw tables"
    }

    fn name(&self) -> &'static str {
        match self.flavor {
            IptablesFlavor::Nft => "iptables-nft",
            IptablesFlavor::Legacy => "iptables-legacy",
        }
    }

    fn apply(&mut self, rules: &RuleSet) -> Result<(), FirewallError> {
        let states = self.states().map_err(FirewallError::List)?;
        let mut inputs = self.render_all(rules, &states);
        if let Some(reject) = self.reject_next_restore.take() {
            if let Some((_, input)) = inputs.iter_mut().find(|(f, _)| *f == reject) {
                if let Some(at) = input.rfind("COMMIT") {
                    input.insert_str(at, "-A PREROUTING -j LOWPORT-NO-SUCH-CHAIN\n");
                }
            }
        }
        for (i, (family, input)) in inputs.iter().enumerate() {
            tracing::debug!(%family, input = %input, "iptables-restore");
            if let Err(e) = self.restore(*family, input) {
                // Each COMMIT is its own transaction: an earlier family, or
                // this family's raw table, may hold new rules already.
                return match self.roll_back(&states[..=i]) {
                    Ok(()) => Err(rejected(e)),
                    Err(again) => Err(FirewallError::Other(format!(
                        "iptables-restore rejected the {family} rules: {e}; putting the \
                         previous rules back failed too ({again}), so lowport's chains may \
                         hold part of each: see `lowport rules show`, then apply again"
                    ))),
                };
            }
        }
        Ok(())
    }

    fn remove(&mut self) -> Result<(), FirewallError> {
        let states = self.states().map_err(FirewallError::List)?;
        for (family, state) in &states {
            if state.is_empty() {
                continue;
            }
            let mut input = String::new();
            for (table, t) in [("raw", &state.raw), ("nat", &state.nat)] {
                if t.is_empty() {
                    continue;
                }
                let _ = writeln!(input, "*{table}");
                for jump in &t.jumps {
                    let _ = writeln!(input, "-D {jump}");
                }
                for chain in &t.chains {
                    let _ = writeln!(input, "-F {chain}\n-X {chain}");
                }
                let _ = writeln!(input, "COMMIT");
            }
            tracing::debug!(%family, input = %input, "iptables-restore");
            self.restore(*family, &input)
                .map_err(FirewallError::Remove)?;
        }
        Ok(())
    }

    fn list(&mut self) -> Result<Option<RuleSet>, FirewallError> {
        let states = self.states().map_err(FirewallError::List)?;
        decode_states(&states)
    }

    /// The restore input for each family, as `apply` would send it now: the
    /// jumps it deletes are the ones installed at this moment (none when
    /// they cannot be read, e.g. without root).
    fn render(&self, rules: &RuleSet) -> String {
        let states: Vec<(Family, FamilyState)> = Self::families()
            .into_iter()
            .map(|f| (f, self.read_state(f).unwrap_or_default()))
            .collect();
        self.render_all(rules, &states)
            .into_iter()
            .map(|(_, text)| text)
            .collect()
    }
}

/// Shared by the tests of render, decode and parse.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::plan::{Hook, MasqRule, NatAction, NatRule};
    use crate::mapping::L4;

    pub(super) fn rule(hook: Hook, family: Option<Family>, action: NatAction) -> NatRule {
        NatRule {
            hook,
            family,
            daddr: None,
            l4: L4::Tcp,
            dport: 80,
            action,
            comment: "web".into(),
        }
    }

    pub(super) fn sample() -> RuleSet {
        let lo = NatAction::Dnat {
            addr: "127.0.0.1".parse().unwrap(),
            port: 8080,
        };
        let six = NatAction::Dnat {
            addr: "fd00::5".parse().unwrap(),
            port: 8443,
        };
        RuleSet {
            nat: vec![
                rule(Hook::Prerouting, Some(Family::V6), six),
                rule(Hook::Prerouting, Some(Family::V4), lo),
                rule(Hook::Prerouting, None, NatAction::Redirect { port: 8080 }),
                rule(Hook::Output, Some(Family::V4), lo),
            ],
            masquerade: vec![MasqRule {
                daddr: "fd00::5".parse().unwrap(),
                l4: L4::Udp,
                dport: 8443,
                comment: "h3".into(),
            }],
            loopback_guard: true,
        }
    }

    /// What iptables-save prints for what render sent (the tools echo the
    /// rule specs back in the same spelling).
    pub(super) fn as_saved(input: &str) -> FamilyState {
        let mut st = FamilyState::default();
        let mut table = "";
        let mut text = String::new();
        let flush = |table: &str, text: &mut String, st: &mut FamilyState| {
            let parsed = parse_save(text);
            if table == "raw" {
                st.raw = parsed;
            } else if table == "nat" {
                st.nat = parsed;
            }
            text.clear();
        };
        for line in input.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = if t == "raw" { "raw" } else { "nat" };
            } else if line == "COMMIT" {
                flush(table, &mut text, &mut st);
            } else if !line.starts_with('-') || line.starts_with("-A ") {
                text.push_str(line);
                text.push('\n');
            } else if let Some(rest) = line.strip_prefix("-I ") {
                let rest = rest.replacen(" 1 ", " ", 1);
                text.push_str(&format!("-A {rest}\n"));
            }
        }
        st
    }

    /// The nat and raw tables as `iptables-save` would print them after
    /// this restore input.
    fn saved_tables(input: &str) -> (String, String) {
        let (mut nat, mut raw) = (String::new(), String::new());
        let mut into_raw = false;
        for line in input.lines() {
            if let Some(t) = line.strip_prefix('*') {
                into_raw = t == "raw";
                continue;
            }
            let out = if into_raw { &mut raw } else { &mut nat };
            if line.starts_with(':') || line.starts_with("-A ") {
                out.push_str(line);
                out.push('\n');
            } else if let Some(rest) = line.strip_prefix("-I ") {
                out.push_str(&format!("-A {}\n", rest.replacen(" 1 ", " ", 1)));
            }
        }
        (nat, raw)
    }

    /// The fuzz targets and their seeds go through these two: they must
    /// render and decode as the backend does.
    #[test]
    fn the_fuzzing_entry_points_render_and_decode_like_the_backend() {
        let rs = sample();
        let inputs = restore_input_for_fuzzing(&rs);
        let families: Vec<Family> = inputs.iter().map(|(f, _)| *f).collect();
        assert_eq!(families, [Family::V4, Family::V6]);
        assert!(inputs[0].1.contains("*raw\n") && inputs[1].1.contains("*nat\n"));
        let (v4_nat, v4_raw) = saved_tables(&inputs[0].1);
        let (v6_nat, _) = saved_tables(&inputs[1].1);
        assert_eq!(
            decode_save_for_fuzzing(&v4_nat, &v4_raw, &v6_nat),
            Ok(Some(rs))
        );
        assert_eq!(decode_save_for_fuzzing("", "", ""), Ok(None));
    }
}

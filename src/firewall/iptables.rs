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

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::process::{Command, Stdio};

use super::plan::{Family, Hook, MasqRule, NatAction, NatRule, RuleSet};
use super::{Backend, FirewallError};
use crate::mapping::L4;

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

/// What of lowport's is in one table of one family now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct TableState {
    /// lowport's chains that exist.
    chains: Vec<String>,
    /// Rules outside lowport's chains that jump into them, as `iptables-save`
    /// prints them after `-A ` (`PREROUTING -m comment … -j LOWPORT-…`).
    jumps: Vec<String>,
    /// Rules inside lowport's chains: (chain, rest of the line).
    rules: Vec<(String, String)>,
}

impl TableState {
    fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.jumps.is_empty()
    }
}

/// The tables lowport uses in one family.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct FamilyState {
    nat: TableState,
    raw: TableState,
}

impl FamilyState {
    fn is_empty(&self) -> bool {
        self.nat.is_empty() && self.raw.is_empty()
    }
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

    /// The restore input for one family, given what is there now.
    fn render_family(&self, rules: &RuleSet, family: Family, now: &FamilyState) -> String {
        let mut out = format!(
            "# {}: {} -w --noflush\n",
            family,
            self.flavor.tool(family, "restore")
        );
        // raw: the guard, IPv4 only.
        if family == Family::V4 && (rules.loopback_guard || !now.raw.is_empty()) {
            let mut t = TableText::new("raw", &now.raw);
            if rules.loopback_guard {
                t.declare(CHAIN_GUARD);
                t.rule(CHAIN_GUARD, &guard_rule_spec());
            }
            t.finish(&mut out);
        }
        // nat: both DNAT chains always (so an empty rule set still reads
        // back as installed), masquerade when a remote target needs it.
        let mut t = TableText::new("nat", &now.nat);
        t.declare(CHAIN_PREROUTING);
        t.declare(CHAIN_OUTPUT);
        let masq: Vec<(usize, &MasqRule)> = rules
            .masquerade
            .iter()
            .enumerate()
            .filter(|(_, m)| Family::of(m.daddr) == family)
            .collect();
        if !masq.is_empty() {
            t.declare(CHAIN_POSTROUTING);
        }
        for (seq, r) in rules.nat.iter().enumerate() {
            if r.family.is_some_and(|f| f != family) {
                continue;
            }
            let chain = match r.hook {
                Hook::Prerouting => CHAIN_PREROUTING,
                Hook::Output => CHAIN_OUTPUT,
            };
            t.rule(chain, &nat_rule_spec(r, seq));
        }
        for (seq, m) in masq {
            t.rule(CHAIN_POSTROUTING, &masq_rule_spec(m, seq));
        }
        t.finish(&mut out);
        out
    }

    fn render_all(
        &self,
        rules: &RuleSet,
        states: &[(Family, FamilyState)],
    ) -> Vec<(Family, String)> {
        states
            .iter()
            .map(|(family, now)| (*family, self.render_family(rules, *family, now)))
            .collect()
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

/// One `*table … COMMIT` block being written: declarations, rules, then
/// the jumps (old ones deleted, new ones inserted at position 1), then the
/// removal of lowport's chains that are no longer needed.
struct TableText<'a> {
    table: &'static str,
    now: &'a TableState,
    declared: Vec<&'static str>,
    rules: Vec<String>,
}

impl<'a> TableText<'a> {
    fn new(table: &'static str, now: &'a TableState) -> Self {
        TableText {
            table,
            now,
            declared: Vec::new(),
            rules: Vec::new(),
        }
    }

    fn declare(&mut self, chain: &'static str) {
        self.declared.push(chain);
    }

    fn rule(&mut self, chain: &str, spec: &str) {
        self.rules.push(format!("-A {chain} {spec}"));
    }

    fn finish(self, out: &mut String) {
        let _ = writeln!(out, "*{}", self.table);
        for chain in &self.declared {
            // Creates the chain, or (with --noflush) empties it.
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for r in &self.rules {
            let _ = writeln!(out, "{r}");
        }
        for jump in &self.now.jumps {
            let _ = writeln!(out, "-D {jump}");
        }
        for chain in &self.declared {
            let _ = writeln!(
                out,
                "-I {} 1 -m comment --comment {JUMP_COMMENT} -j {chain}",
                builtin_chain_for(chain)
            );
        }
        for chain in &self.now.chains {
            if !self.declared.contains(&chain.as_str()) {
                let _ = writeln!(out, "-F {chain}");
                let _ = writeln!(out, "-X {chain}");
            }
        }
        let _ = writeln!(out, "COMMIT");
    }
}

/// Restore input that turns the tables from `now` back into `before`: the
/// chains lowport had, with their rules as `iptables-save` printed them, and
/// their jumps at the head of the built-in chains, where lowport puts them.
fn render_rollback(before: &FamilyState, now: &FamilyState) -> String {
    let mut out = String::new();
    for (table, before, now) in [
        ("raw", &before.raw, &now.raw),
        ("nat", &before.nat, &now.nat),
    ] {
        if before == now {
            continue;
        }
        let _ = writeln!(out, "*{table}");
        for chain in &before.chains {
            // Creates the chain, or (with --noflush) empties it.
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for jump in &now.jumps {
            let _ = writeln!(out, "-D {jump}");
        }
        for chain in &now.chains {
            if !before.chains.contains(chain) {
                let _ = writeln!(out, "-F {chain}\n-X {chain}");
            }
        }
        for (chain, rest) in &before.rules {
            let _ = writeln!(out, "-A {chain} {rest}");
        }
        for jump in before.jumps.iter().rev() {
            let (chain, rest) = jump.split_once(' ').unwrap_or((jump, ""));
            let _ = writeln!(out, "-I {chain} 1 {rest}");
        }
        let _ = writeln!(out, "COMMIT");
    }
    out
}

/// The built-in chain that jumps to one of lowport's.
fn builtin_chain_for(chain: &str) -> &'static str {
    match chain {
        CHAIN_OUTPUT => "OUTPUT",
        CHAIN_POSTROUTING => "POSTROUTING",
        _ => "PREROUTING",
    }
}

/// The comment of rule number `seq` of mapping `label`.
fn rule_comment(label: &str, seq: usize) -> String {
    format!("{label} [{seq}]")
}

/// `-d 10.0.0.1/32 -p tcp -m tcp --dport 80 [-m addrtype --dst-type LOCAL]
/// -m comment --comment "web [0]" -j REDIRECT --to-ports 8080`
fn nat_rule_spec(r: &NatRule, seq: usize) -> String {
    let mut s = String::new();
    if let Some(d) = r.daddr {
        let _ = write!(s, "-d {} ", host_prefix(d));
    }
    let _ = write!(s, "-p {l4} -m {l4} --dport {} ", r.dport, l4 = r.l4);
    if r.hook == Hook::Output {
        // Local clients only when the destination is this host: without
        // this, the host's own connections to port 80 elsewhere would be
        // redirected to its backend.
        s.push_str("-m addrtype --dst-type LOCAL ");
    }
    let _ = write!(
        s,
        "-m comment --comment \"{}\" ",
        rule_comment(&r.comment, seq)
    );
    match r.action {
        NatAction::Redirect { port } => {
            let _ = write!(s, "-j REDIRECT --to-ports {port}");
        }
        NatAction::Dnat { addr, port } => {
            let _ = write!(
                s,
                "-j DNAT --to-destination {}",
                std::net::SocketAddr::new(addr, port)
            );
        }
    }
    s
}

/// Drop what comes for 127.0.0.0/8 from anywhere but `lo`: with
/// route_localnet on, the DNAT to a loopback backend would otherwise let
/// other hosts reach every loopback service.
fn guard_rule_spec() -> String {
    format!("! -i lo -d 127.0.0.0/8 -m comment --comment \"{GUARD_COMMENT}\" -j DROP")
}

/// Masquerade only what lowport translated (`--ctstate DNAT`), so other
/// traffic to the same target keeps its source address.
fn masq_rule_spec(m: &MasqRule, seq: usize) -> String {
    format!(
        "-d {} -p {l4} -m {l4} --dport {} -m conntrack --ctstate DNAT -m comment --comment \"{}\" -j MASQUERADE",
        host_prefix(m.daddr),
        m.dport,
        rule_comment(&m.comment, seq),
        l4 = m.l4
    )
}

fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// Pick lowport's chains, their rules and the jumps to them out of one
/// table's `iptables-save` output.
fn parse_save(text: &str) -> TableState {
    let mut state = TableState::default();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if name.starts_with(CHAIN_PREFIX) {
                state.chains.push(name.to_owned());
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, rest) = rule.split_once(' ').unwrap_or((rule, ""));
            if chain.starts_with(CHAIN_PREFIX) {
                state.rules.push((chain.to_owned(), rest.to_owned()));
            } else if rest
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1].starts_with(CHAIN_PREFIX))
            {
                state.jumps.push(rule.to_owned());
            }
        }
    }
    state
}

/// Split an `iptables-save` rule into words, honouring double quotes (and
/// `\"` inside them).
fn tokenize(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// One of lowport's rules, decoded from its words.
#[derive(Debug, Default, PartialEq)]
struct Decoded {
    daddr: Option<(IpAddr, u8)>,
    not_lo: bool,
    l4: Option<L4>,
    dport: Option<u16>,
    local: bool,
    ct_dnat: bool,
    comment: Option<String>,
    target: Option<String>,
    to_ports: Option<u16>,
    to_dest: Option<std::net::SocketAddr>,
}

fn decode(rest: &str) -> Option<Decoded> {
    let words = tokenize(rest);
    let mut d = Decoded::default();
    let mut i = 0;
    let mut negate = false;
    while i < words.len() {
        let w = words[i].as_str();
        let arg = words.get(i + 1).map(String::as_str);
        i += 2;
        match (w, arg, negate) {
            ("!", _, false) => {
                negate = true;
                i -= 1;
                continue;
            }
            ("-i", Some("lo"), true) => d.not_lo = true,
            ("-d", Some(a), false) => {
                let (ip, len) = a.split_once('/').unwrap_or((a, ""));
                let ip: IpAddr = ip.parse().ok()?;
                let full = if ip.is_ipv4() { 32 } else { 128 };
                let len = if len.is_empty() {
                    full
                } else {
                    len.parse().ok()?
                };
                d.daddr = Some((ip, len));
            }
            ("-p", Some("tcp"), false) => d.l4 = Some(L4::Tcp),
            ("-p", Some("udp"), false) => d.l4 = Some(L4::Udp),
            ("-m", Some("tcp" | "udp" | "addrtype" | "comment" | "conntrack"), false) => {}
            ("--dport", Some(p), false) => d.dport = Some(p.parse().ok()?),
            ("--dst-type", Some("LOCAL"), false) => d.local = true,
            ("--ctstate", Some("DNAT"), false) => d.ct_dnat = true,
            ("--comment", Some(c), false) => d.comment = Some(c.to_owned()),
            ("-j", Some(t), false) => d.target = Some(t.to_owned()),
            ("--to-ports", Some(p), false) => d.to_ports = Some(p.parse().ok()?),
            ("--to-destination", Some(a), false) => d.to_dest = Some(a.parse().ok()?),
            _ => return None,
        }
        negate = false;
    }
    Some(d)
}

/// `web [3]` → ("web", 3).
fn split_comment(c: &str) -> Option<(String, usize)> {
    let (label, seq) = c.strip_suffix(']')?.rsplit_once(" [")?;
    Some((label.to_owned(), seq.parse().ok()?))
}

/// Rebuild a [`RuleSet`] from both families' tables; `Foreign` for any rule
/// in lowport's chains that it would not have written.
fn decode_states(states: &[(Family, FamilyState)]) -> Result<Option<RuleSet>, FirewallError> {
    if states
        .iter()
        .all(|(_, s)| s.nat.chains.is_empty() && s.raw.chains.is_empty())
    {
        return Ok(None);
    }
    let mut nat: BTreeMap<usize, Vec<(Family, NatRule)>> = BTreeMap::new();
    let mut masq: BTreeMap<usize, MasqRule> = BTreeMap::new();
    let mut guard = false;
    for (family, state) in states {
        for (chain, rest) in state.nat.rules.iter().chain(&state.raw.rules) {
            let foreign = || FirewallError::Foreign(format!("-A {chain} {rest}"));
            let d = decode(rest).ok_or_else(foreign)?;
            // Each rule is read for its values, then written again as
            // lowport would write it: only a rule whose every word decodes
            // the same (prefix length, addrtype, conntrack state, `! -i lo`,
            // target options…) is lowport's; anything else someone added or
            // changed makes it foreign.
            let written_as = |spec: String| decode(&spec).is_some_and(|w| w == d);
            if chain == CHAIN_GUARD {
                if !written_as(guard_rule_spec()) {
                    return Err(foreign());
                }
                guard = true;
                continue;
            }
            let (label, seq) = d
                .comment
                .as_deref()
                .and_then(split_comment)
                .ok_or_else(foreign)?;
            let (l4, dport) = (d.l4.ok_or_else(foreign)?, d.dport.ok_or_else(foreign)?);
            let daddr = d.daddr.map(|(ip, _)| ip);
            if chain == CHAIN_POSTROUTING {
                let m = MasqRule {
                    daddr: daddr.ok_or_else(foreign)?,
                    l4,
                    dport,
                    comment: label,
                };
                if !written_as(masq_rule_spec(&m, seq)) {
                    return Err(foreign());
                }
                masq.insert(seq, m);
                continue;
            }
            let hook = match chain.as_str() {
                CHAIN_PREROUTING => Hook::Prerouting,
                CHAIN_OUTPUT => Hook::Output,
                _ => return Err(foreign()),
            };
            let action = match (d.target.as_deref(), d.to_ports, d.to_dest) {
                (Some("REDIRECT"), Some(port), _) => NatAction::Redirect { port },
                (Some("DNAT"), _, Some(to)) => NatAction::Dnat {
                    addr: to.ip(),
                    port: to.port(),
                },
                _ => return Err(foreign()),
            };
            let rule = NatRule {
                hook,
                family: Some(*family),
                daddr,
                l4,
                dport,
                action,
                comment: label,
            };
            if !written_as(nat_rule_spec(&rule, seq)) {
                return Err(foreign());
            }
            nat.entry(seq).or_default().push((*family, rule));
        }
    }
    let mut rules = RuleSet {
        loopback_guard: guard,
        ..RuleSet::default()
    };
    for (seq, mut copies) in nat {
        let rule = match copies.len() {
            1 => copies.remove(0).1,
            // The same position in both families is one rule for both.
            2 if {
                let (a, b) = (&copies[0].1, &copies[1].1);
                copies[0].0 != copies[1].0
                    && NatRule {
                        family: None,
                        ..a.clone()
                    } == NatRule {
                        family: None,
                        ..b.clone()
                    }
            } =>
            {
                NatRule {
                    family: None,
                    ..copies.remove(0).1
                }
            }
            _ => {
                return Err(FirewallError::Foreign(format!(
                    "two different rules are numbered [{seq}]"
                )))
            }
        };
        rules.nat.push(rule);
    }
    rules.masquerade = masq.into_values().collect();
    Ok(Some(rules))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(hook: Hook, family: Option<Family>, action: NatAction) -> NatRule {
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

    fn sample() -> RuleSet {
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
    fn as_saved(input: &str) -> FamilyState {
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

    #[test]
    fn render_then_decode_gives_the_same_ruleset() {
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let rs = sample();
        let states: Vec<(Family, FamilyState)> = [Family::V4, Family::V6]
            .into_iter()
            .map(|f| {
                (
                    f,
                    as_saved(&ipt.render_family(&rs, f, &FamilyState::default())),
                )
            })
            .collect();
        assert_eq!(decode_states(&states).unwrap(), Some(rs));
    }

    #[test]
    fn output_rules_match_local_destinations_only() {
        let ipt = Iptables::new(IptablesFlavor::Legacy);
        let text = ipt.render_family(&sample(), Family::V4, &FamilyState::default());
        assert!(text.contains(
            "-A LOWPORT-OUTPUT -p tcp -m tcp --dport 80 -m addrtype --dst-type LOCAL -m comment --comment \"web [3]\" -j DNAT --to-destination 127.0.0.1:8080"
        ), "{text}");
        assert!(text.starts_with("# ipv4: iptables-legacy-restore -w --noflush\n*raw\n"));
        assert!(text.contains("-A LOWPORT-GUARD ! -i lo -d 127.0.0.0/8"));
        assert_eq!(text.matches("COMMIT").count(), 2);
    }

    #[test]
    fn old_jumps_are_deleted_before_the_new_one_and_stale_chains_go() {
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let now = FamilyState {
            nat: parse_save(
                ":PREROUTING ACCEPT [0:0]\n:LOWPORT-POSTROUTING - [0:0]\n:LOWPORT-PREROUTING - [0:0]\n\
                 -A PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING\n\
                 -A POSTROUTING -m comment --comment lowport -j LOWPORT-POSTROUTING\n",
            ),
            raw: TableState::default(),
        };
        let rs = RuleSet {
            nat: vec![rule(
                Hook::Prerouting,
                None,
                NatAction::Redirect { port: 8080 },
            )],
            ..RuleSet::default()
        };
        let text = ipt.render_family(&rs, Family::V4, &now);
        let del = text
            .find("-D PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING")
            .unwrap();
        let ins = text
            .find("-I PREROUTING 1 -m comment --comment lowport -j LOWPORT-PREROUTING")
            .unwrap();
        assert!(del < ins, "{text}");
        assert!(
            text.contains("-D POSTROUTING -m comment --comment lowport -j LOWPORT-POSTROUTING\n")
        );
        assert!(
            text.contains("-F LOWPORT-POSTROUTING\n-X LOWPORT-POSTROUTING\n"),
            "{text}"
        );
        assert!(!text.contains("*raw"), "{text}");
    }

    #[test]
    fn a_rule_lowport_did_not_write_is_foreign() {
        let st = FamilyState {
            nat: parse_save(
                ":LOWPORT-PREROUTING - [0:0]\n-A LOWPORT-PREROUTING -s 10.0.0.0/8 -j ACCEPT\n",
            ),
            raw: TableState::default(),
        };
        let err = decode_states(&[(Family::V4, st)]).unwrap_err();
        assert!(matches!(err, FirewallError::Foreign(_)), "{err}");
    }

    #[test]
    fn tokenizer_keeps_quoted_words() {
        assert_eq!(
            tokenize(r#"-m comment --comment "web [0]" -j X"#),
            vec!["-m", "comment", "--comment", "web [0]", "-j", "X"]
        );
    }

    #[test]
    fn rollback_restores_chains_rules_and_jumps_as_saved() {
        let before = FamilyState {
            nat: parse_save(
                ":PREROUTING ACCEPT [0:0]\n:LOWPORT-PREROUTING - [0:0]\n\
                 -A PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING\n\
                 -A LOWPORT-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment \"web [0]\" -j REDIRECT --to-ports 8080\n",
            ),
            raw: TableState::default(),
        };
        let now = FamilyState {
            nat: parse_save(
                ":PREROUTING ACCEPT [0:0]\n:LOWPORT-PREROUTING - [0:0]\n:LOWPORT-POSTROUTING - [0:0]\n\
                 -A PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING\n\
                 -A POSTROUTING -m comment --comment lowport -j LOWPORT-POSTROUTING\n\
                 -A LOWPORT-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment \"web [0]\" -j REDIRECT --to-ports 9090\n",
            ),
            raw: TableState::default(),
        };
        let text = render_rollback(&before, &now);
        assert_eq!(
            text,
            "*nat\n\
             :LOWPORT-PREROUTING - [0:0]\n\
             -D PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING\n\
             -D POSTROUTING -m comment --comment lowport -j LOWPORT-POSTROUTING\n\
             -F LOWPORT-POSTROUTING\n\
             -X LOWPORT-POSTROUTING\n\
             -A LOWPORT-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment \"web [0]\" -j REDIRECT --to-ports 8080\n\
             -I PREROUTING 1 -m comment --comment lowport -j LOWPORT-PREROUTING\n\
             COMMIT\n"
        );
        // Nothing changed: nothing to send (raw untouched above as well).
        assert_eq!(render_rollback(&before, &before), "");
    }

    /// Decode what `iptables-save` would print for these restore inputs
    /// (IPv4, IPv6) as `rules show` does.
    fn listed(v4: &str, v6: &str) -> Result<Option<RuleSet>, FirewallError> {
        decode_states(&[(Family::V4, as_saved(v4)), (Family::V6, as_saved(v6))])
    }

    /// lowport's own rules, then the same text with `from` replaced by
    /// `to` in `family`'s input: the edited rules must not be taken for
    /// lowport's.
    fn edit_is_foreign(rs: &RuleSet, family: Family, from: &str, to: &str) {
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let mut v4 = ipt.render_family(rs, Family::V4, &FamilyState::default());
        let mut v6 = ipt.render_family(rs, Family::V6, &FamilyState::default());
        assert_eq!(listed(&v4, &v6).unwrap().as_ref(), Some(rs));
        let text = if family == Family::V4 {
            &mut v4
        } else {
            &mut v6
        };
        assert!(text.contains(from), "`{from}` not in\n{text}");
        *text = text.replacen(from, to, 1);
        match listed(&v4, &v6) {
            Err(FirewallError::Foreign(_)) => {}
            other => panic!("`{from}` → `{to}` gave {other:?}, not Foreign"),
        }
    }

    fn dnat(addr: &str, port: u16) -> NatAction {
        NatAction::Dnat {
            addr: addr.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn a_lowport_rule_edited_by_one_attribute_is_foreign() {
        let mut to_host = rule(Hook::Prerouting, Some(Family::V4), dnat("10.0.0.9", 8080));
        to_host.daddr = Some("10.0.0.1".parse().unwrap());
        let mut to_host6 = rule(Hook::Prerouting, Some(Family::V6), dnat("fd00::9", 8080));
        to_host6.daddr = Some("fd00::1".parse().unwrap());
        let rs = RuleSet {
            nat: vec![
                to_host,
                to_host6,
                rule(Hook::Output, None, NatAction::Redirect { port: 8080 }),
            ],
            masquerade: vec![MasqRule {
                daddr: "10.0.0.9".parse().unwrap(),
                l4: L4::Tcp,
                dport: 8080,
                comment: "far".into(),
            }],
            loopback_guard: true,
        };
        let v4 = Family::V4;
        // A destination network instead of the one address.
        edit_is_foreign(&rs, v4, "-d 10.0.0.1/32", "-d 10.0.0.1/24");
        edit_is_foreign(&rs, Family::V6, "-d fd00::1/128", "-d fd00::1/64");
        edit_is_foreign(&rs, v4, "-d 10.0.0.9/32 -p tcp", "-d 10.0.0.9/31 -p tcp");
        // Local clients for every destination, or remote ones for local only.
        edit_is_foreign(&rs, v4, "-m addrtype --dst-type LOCAL ", "");
        edit_is_foreign(
            &rs,
            v4,
            "-A LOWPORT-PREROUTING -d 10.0.0.1/32 ",
            "-A LOWPORT-PREROUTING -d 10.0.0.1/32 -m addrtype --dst-type LOCAL ",
        );
        // Masquerade for all traffic to the target, not only lowport's.
        edit_is_foreign(&rs, v4, "-m conntrack --ctstate DNAT ", "");
        edit_is_foreign(&rs, v4, "-j MASQUERADE", "-j ACCEPT");
        // The guard: another network, also from lo, or accepting.
        edit_is_foreign(&rs, v4, "127.0.0.0/8", "127.0.0.0/16");
        edit_is_foreign(&rs, v4, "! -i lo ", "");
        edit_is_foreign(&rs, v4, "! -i lo ", "-i lo ");
        edit_is_foreign(&rs, v4, "-j DROP", "-j ACCEPT");
        // Other matches or actions lowport never writes.
        edit_is_foreign(
            &rs,
            v4,
            "-p tcp -m tcp --dport 80",
            "-p tcp -m tcp ! --dport 80",
        );
        edit_is_foreign(
            &rs,
            v4,
            "-p tcp -m tcp --dport 80",
            "-p sctp -m sctp --dport 80",
        );
        edit_is_foreign(&rs, v4, "-j REDIRECT --to-ports 8080", "-j REDIRECT");
        edit_is_foreign(
            &rs,
            v4,
            "-j REDIRECT --to-ports 8080",
            "-j DNAT --to-ports 8080",
        );
        edit_is_foreign(
            &rs,
            v4,
            "-j DNAT --to-destination 10.0.0.9:8080",
            "-j REDIRECT --to-destination 10.0.0.9:8080",
        );
        edit_is_foreign(&rs, v4, "\"far [0]\"", "far");
        edit_is_foreign(&rs, v4, "-j MASQUERADE", "-j MASQUERADE --to-ports 9");
    }

    #[test]
    fn the_same_number_in_both_families_is_one_rule_only_when_they_agree() {
        let both = RuleSet {
            nat: vec![rule(
                Hook::Prerouting,
                None,
                NatAction::Redirect { port: 8080 },
            )],
            ..RuleSet::default()
        };
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let v4 = ipt.render_family(&both, Family::V4, &FamilyState::default());
        let v6 = ipt.render_family(&both, Family::V6, &FamilyState::default());
        assert_eq!(listed(&v4, &v6).unwrap(), Some(both));

        // Different ports under the same number: not one rule for both.
        let v6_other = v6.replace("--to-ports 8080", "--to-ports 9090");
        assert!(matches!(
            listed(&v4, &v6_other),
            Err(FirewallError::Foreign(_))
        ));
        // The same rule twice in one family.
        let twice = v4.replace(
            "COMMIT",
            "-A LOWPORT-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment \"web [0]\" -j REDIRECT --to-ports 8080\nCOMMIT",
        );
        assert!(matches!(listed(&twice, ""), Err(FirewallError::Foreign(_))));
        // One family only: that family's rule.
        assert_eq!(
            listed(&v4, "").unwrap().unwrap().nat,
            vec![rule(
                Hook::Prerouting,
                Some(Family::V4),
                NatAction::Redirect { port: 8080 }
            )]
        );
    }

    #[test]
    fn rules_keep_their_comment_and_position() {
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let text = "*nat\n:LOWPORT-PREROUTING - [0:0]\n\
            -A LOWPORT-PREROUTING -p udp -m udp --dport 443 -m comment --comment \"my site [1]\" -j REDIRECT --to-ports 8443\n\
            -A LOWPORT-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment \"web [0]\" -j REDIRECT --to-ports 8080\nCOMMIT\n";
        let rs = listed(text, "").unwrap().unwrap();
        let comments: Vec<(&str, L4, u16)> = rs
            .nat
            .iter()
            .map(|r| (r.comment.as_str(), r.l4, r.dport))
            .collect();
        assert_eq!(comments, [("web", L4::Tcp, 80), ("my site", L4::Udp, 443)]);
        // And the comment is written back the same way.
        let again = ipt.render_family(&rs, Family::V4, &FamilyState::default());
        assert!(again.contains("--comment \"my site [1]\""), "{again}");
        // A rule without its number, or with no comment at all, is not ours.
        for bad in ["\"my site\"", "\"my site [x]\"", "\"my site 1]\""] {
            let t = text.replace("\"my site [1]\"", bad);
            assert!(listed(&t, "").is_err(), "{bad}");
        }
        let t = text.replace("-m comment --comment \"my site [1]\" ", "");
        assert!(listed(&t, "").is_err());
    }

    #[test]
    fn jumps_come_from_the_builtin_chain_of_the_same_name() {
        let rs = sample();
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let v4 = ipt.render_family(&rs, Family::V4, &FamilyState::default());
        let v6 = ipt.render_family(&rs, Family::V6, &FamilyState::default());
        let jumps = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with("-I "))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            jumps(&v4),
            [
                "-I PREROUTING 1 -m comment --comment lowport -j LOWPORT-GUARD",
                "-I PREROUTING 1 -m comment --comment lowport -j LOWPORT-PREROUTING",
                "-I OUTPUT 1 -m comment --comment lowport -j LOWPORT-OUTPUT",
            ]
        );
        // The masquerade target is IPv6: its chain is in the IPv6 input only.
        assert_eq!(
            jumps(&v6),
            [
                "-I PREROUTING 1 -m comment --comment lowport -j LOWPORT-PREROUTING",
                "-I OUTPUT 1 -m comment --comment lowport -j LOWPORT-OUTPUT",
                "-I POSTROUTING 1 -m comment --comment lowport -j LOWPORT-POSTROUTING",
            ]
        );
    }

    #[test]
    fn each_family_gets_only_its_own_rules() {
        let rs = sample();
        let ipt = Iptables::new(IptablesFlavor::Nft);
        let v4 = ipt.render_family(&rs, Family::V4, &FamilyState::default());
        let v6 = ipt.render_family(&rs, Family::V6, &FamilyState::default());
        assert!(
            v4.starts_with("# ipv4: iptables-nft-restore -w --noflush\n"),
            "{v4}"
        );
        assert!(
            v6.starts_with("# ipv6: ip6tables-nft-restore -w --noflush\n"),
            "{v6}"
        );
        // The guard is IPv4 only.
        assert!(v4.contains("*raw\n") && !v6.contains("*raw"), "{v6}");
        assert!(!v6.contains("127.0.0.0"), "{v6}");
        // [0] is IPv6 only, [1] and [3] IPv4 only, [2] both.
        for (text, has, lacks) in [
            (&v4, ["[1]", "[2]", "[3]"], ["[0]", "h3 [0]", "fd00::5"]),
            (
                &v6,
                ["web [0]", "[2]", "h3 [0]"],
                ["[1]", "[3]", "127.0.0.1"],
            ),
        ] {
            for h in has {
                assert!(text.contains(h), "{h} missing in\n{text}");
            }
            for l in lacks {
                assert!(!text.contains(l), "{l} in\n{text}");
            }
        }
        // No guard and nothing of it left: no raw table at all; a guard
        // left from before: the raw table, to remove it.
        let no_guard = RuleSet {
            loopback_guard: false,
            ..sample()
        };
        let v4 = ipt.render_family(&no_guard, Family::V4, &FamilyState::default());
        assert!(!v4.contains("*raw"), "{v4}");
        let had_guard = FamilyState {
            raw: parse_save(
                ":LOWPORT-GUARD - [0:0]\n-A PREROUTING -m comment --comment lowport -j LOWPORT-GUARD\n",
            ),
            ..FamilyState::default()
        };
        let v4 = ipt.render_family(&no_guard, Family::V4, &had_guard);
        assert!(
            v4.contains("*raw\n-D PREROUTING -m comment --comment lowport -j LOWPORT-GUARD\n-F LOWPORT-GUARD\n-X LOWPORT-GUARD\nCOMMIT\n"),
            "{v4}"
        );
    }

    #[test]
    fn saved_words_honour_quotes_and_escaped_quotes() {
        assert_eq!(
            tokenize(r#"-m comment --comment "say \"hi\" [0]"  -j	X"#),
            vec!["-m", "comment", "--comment", r#"say "hi" [0]"#, "-j", "X"]
        );
        // An empty quoted word is a word; a backslash elsewhere is kept.
        assert_eq!(
            tokenize(r#"--comment "" -j a\b "c\d""#),
            vec!["--comment", "", "-j", r"a\b", r"c\d"]
        );
        assert_eq!(tokenize("  "), Vec::<String>::new());
        // Through the decoder: the comment keeps its quotes, and the words
        // after it are still read as words (not taken into the comment).
        let d = decode(
            r#"-p tcp -m comment --comment "a \"b -j DROP\" [0]" -j REDIRECT --to-ports 8080"#,
        )
        .unwrap();
        assert_eq!(d.comment.as_deref(), Some(r#"a "b -j DROP" [0]"#));
        assert_eq!(
            (d.target.as_deref(), d.to_ports),
            (Some("REDIRECT"), Some(8080))
        );
        // lowport never writes a quote (names cannot hold one): foreign.
        let text = "*nat\n:LOWPORT-PREROUTING - [0:0]\n\
            -A LOWPORT-PREROUTING -p tcp -m tcp --dport 80 -m comment --comment \"say \\\"hi\\\" [0]\" -j REDIRECT --to-ports 8080\nCOMMIT\n";
        assert!(matches!(listed(text, ""), Err(FirewallError::Foreign(_))));
    }

    #[test]
    fn only_lowport_chains_and_jumps_to_them_are_picked_out() {
        let st = parse_save(
            ":PREROUTING ACCEPT [0:0]\n:LOWPORT-PREROUTING - [0:0]\n:OTHER - [0:0]\n\
             -A PREROUTING -p tcp -j OTHER\n\
             -A PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING\n\
             -A OUTPUT -g LOWPORT-OUTPUT\n\
             -A OUTPUT -m comment --comment LOWPORT-OUTPUT -j ACCEPT\n\
             -A OTHER -j LOWPORTX\n\
             -A LOWPORT-PREROUTING -j RETURN\n",
        );
        assert_eq!(st.chains, ["LOWPORT-PREROUTING"]);
        assert_eq!(
            st.jumps,
            [
                "PREROUTING -m comment --comment lowport -j LOWPORT-PREROUTING",
                "OUTPUT -g LOWPORT-OUTPUT",
            ]
        );
        assert_eq!(
            st.rules,
            [("LOWPORT-PREROUTING".to_owned(), "-j RETURN".to_owned())]
        );
    }

    #[test]
    fn nothing_installed_lists_as_none() {
        let st = FamilyState::default();
        assert_eq!(decode_states(&[(Family::V4, st)]).unwrap(), None);
    }
}

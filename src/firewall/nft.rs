//! The nftables backend: a [`RuleSet`] becomes `table inet lowport`, sent
//! to the kernel as one netlink batch, and is read back from it.
//!
//! Every rule is built once, as a `RuleSpec` that holds both the netlink
//! expressions and the `nft` text they stand for, so `apply` and `render`
//! (the `--dry-run` script) cannot drift apart. The expressions are exactly
//! what `nft` 1.0.6 itself generates for that text, so the kernel's listing
//! is the same whichever way the table was installed.
//!
//! `list` decodes the kernel's rules back into a [`RuleSet`]: each rule is
//! recognised, rebuilt from what was recognised, and must then match the
//! kernel's expressions exactly; anything else is reported as foreign.

mod dump;
pub mod monitor;
pub(crate) mod netlink;
pub mod owner;
mod sys;

use std::ffi::CString;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nftnl::{Batch, Chain, ChainType, FinalizedBatch, MsgType, Policy, ProtoFamily, Rule, Table};

use self::owner::{TableInfo, TableMsg, F_OWNER, F_PERSIST};

use self::netlink::{Request, Socket, NLM_F_ACK, NLM_F_DUMP};
use self::sys::{Expr, KernelChain, KernelRule};
use super::plan::{
    Family, Hook, MasqRule, NatAction, NatRule, RuleSet, GUARD_PRIORITY, NAT_PRIORITY,
    SNAT_PRIORITY,
};
use super::{Backend, FirewallError, TABLE};
use crate::mapping::L4;

/// Comment of the loopback guard rule.
pub const GUARD_COMMENT: &str = "lowport: drop 127.0.0.0/8 not from lo";

/// Longest rule comment, in bytes: what libnftnl's comment buffer holds
/// (128 bytes, with a 2-byte header and the terminating NUL).
pub const MAX_COMMENT: usize = 125;

// Kernel constants `libc` does not carry (linux/netfilter/nf_tables.h,
// nf_nat.h, nf_conntrack_common.h).
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;
const IPS_DST_NAT: u32 = 1 << 5;
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const IFNAMSIZ: usize = 16;
/// nft's rule userdata TLV type for the comment.
const UDATA_COMMENT: u8 = nftnl::nftnl_sys::NFTNL_UDATA_RULE_COMMENT as u8;

const REG1: u32 = libc::NFT_REG_1 as u32;
const REG2: u32 = libc::NFT_REG_2 as u32;
const NFPROTO_INET: u8 = libc::NFPROTO_INET as u8;
const SUBSYS_NFTABLES: u8 = libc::NFNL_SUBSYS_NFTABLES as u8;
/// Netlink message type of an nftables "new table" (subsystem << 8 | type).
const NFT_MSG_NEWTABLE: u16 = (SUBSYS_NFTABLES as u16) << 8 | libc::NFT_MSG_NEWTABLE as u16;

/// The nftables backend, over netlink (libnftnl + libmnl).
#[derive(Default)]
pub struct Nftables {
    /// Test hook: make the next batch one the kernel rejects.
    reject_next_batch: bool,
    /// The last `list` found no table: `apply` may create it instead of
    /// replacing it.
    known_absent: bool,
    /// The socket of the last batch, closed with the backend. Closing a
    /// netfilter socket waits until the kernel has freed what the last
    /// transaction deleted, an RCU grace period; kept open, that wait runs
    /// alongside the sysctls and the read-back instead of before them.
    batch_socket: Option<Socket>,
    /// `rules watch`: every batch and read goes through this one socket,
    /// which owns the table when the kernel has the owner flag.
    owner: Option<Owner>,
}

/// The socket `rules watch` holds, and the table flags it creates with.
struct Owner {
    sock: Socket,
    flags: u32,
}

/// What [`Nftables::claim`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// No table yet: the first apply creates it, owned.
    Absent,
    /// A persistent table a stopped watch left behind, now ours; its
    /// rules never stopped serving.
    Adopted,
    /// A table without owner (`rules apply`), replaced by an owned one in
    /// one transaction.
    Replaced,
    /// Ours already, or the kernel has no owner flag: nothing to do.
    Kept,
}

impl std::fmt::Debug for Nftables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nftables")
            .field("reject_next_batch", &self.reject_next_batch)
            .field("known_absent", &self.known_absent)
            .field("batch_socket", &self.batch_socket.is_some())
            .field("owner_flags", &self.owner.as_ref().map(|o| o.flags))
            .finish()
    }
}

impl Nftables {
    /// A backend that talks to the kernel of the calling thread's network
    /// namespace.
    pub fn new() -> Nftables {
        Nftables::default()
    }

    /// For tests of the atomic replace: the next `apply` adds, after all
    /// valid rules, a rule to a chain that does not exist, so the kernel
    /// rejects the whole batch (ENOENT) just as it would any bad rule.
    #[doc(hidden)]
    pub fn reject_next_batch_for_tests(&mut self) {
        self.reject_next_batch = true;
    }

    /// The backend of `rules watch`: one netlink socket for everything,
    /// opened now, and the strongest table flags this kernel accepts
    /// within `allowed` (OWNER|PERSIST on 6.9+, OWNER on 5.12+, none
    /// before), found by a probe that leaves nothing behind.
    pub fn for_watch(allowed: u32) -> Result<Nftables, FirewallError> {
        let mut sock = Socket::open().map_err(FirewallError::Socket)?;
        let mut flags = 0;
        for want in [F_OWNER | F_PERSIST, F_OWNER] {
            if want & !allowed != 0 {
                continue;
            }
            match probe_flags(&mut sock, want) {
                Ok(()) => {
                    flags = want;
                    break;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
                    tracing::debug!(flags = want, error = %e, "table flags not supported");
                }
                Err(e) => return Err(FirewallError::BatchRejected(e)),
            }
        }
        Ok(Nftables {
            owner: Some(Owner { sock, flags }),
            ..Nftables::default()
        })
    }

    /// The flags lowport's table gets in watch mode (0 outside it).
    pub fn table_flags(&self) -> u32 {
        self.owner.as_ref().map_or(0, |o| o.flags)
    }

    /// The port id of the watch socket: the sender of its own batches'
    /// notifications.
    pub fn portid(&self) -> Option<u32> {
        self.owner.as_ref().map(|o| o.sock.portid())
    }

    /// Make the table ours before the first apply (watch mode): adopt a
    /// persistent orphan (no gap: nothing but the owner changes), replace
    /// an unowned table by an owned one with `rules`, refuse a table
    /// another live process owns.
    pub fn claim(&mut self, rules: &RuleSet) -> Result<Claim, FirewallError> {
        let Some(owner) = self.owner.as_mut() else {
            return Ok(Claim::Kept);
        };
        let me = owner.sock.portid();
        let flags = owner.flags;
        let info = owner::table_info(&mut owner.sock).map_err(FirewallError::List)?;
        match info {
            None => Ok(Claim::Absent),
            Some(TableInfo { owner: Some(p), .. }) if p == me => Ok(Claim::Kept),
            Some(TableInfo { owner: Some(p), .. }) => Err(owned_by(p)),
            Some(_) if flags == 0 => Ok(Claim::Kept),
            Some(i) if i.is_orphan() && flags & F_PERSIST != 0 => {
                let mut batch = Batch::new();
                batch.add(&TableMsg { flags: Some(flags) }, MsgType::Add);
                send_batch(&mut owner.sock, &batch.finalize(), None)
                    .map_err(FirewallError::BatchRejected)?;
                Ok(Claim::Adopted)
            }
            Some(_) => {
                self.apply(rules)?;
                Ok(Claim::Replaced)
            }
        }
    }

    /// Leave the rules in place when watch exits (`--keep-on-exit`). A
    /// persistent table just loses its owner as the socket closes; an
    /// owned one without PERSIST would be deleted with it, so it is
    /// replaced first by an unowned copy, in one transaction.
    pub fn release(&mut self, rules: &RuleSet) -> Result<(), FirewallError> {
        let Some(owner) = self.owner.as_mut() else {
            return Ok(());
        };
        if owner.flags & F_OWNER == 0 || owner.flags & F_PERSIST != 0 {
            return Ok(());
        }
        owner.flags = 0;
        self.apply(rules)
    }

    /// The flags and owner of lowport's table, `None` without a table.
    pub fn table_info(&mut self) -> Result<Option<TableInfo>, FirewallError> {
        match self.owner.as_mut() {
            Some(o) => owner::table_info(&mut o.sock),
            None => owner::table_info(&mut Socket::open().map_err(FirewallError::Socket)?),
        }
        .map_err(FirewallError::List)
    }

    /// Send a batch on the watch socket, or on a fresh one kept until the
    /// next (see `batch_socket`). EPERM from an owned table becomes an
    /// error that names its owner.
    fn send_finalized(
        &mut self,
        batch: &FinalizedBatch,
        exclusive: Option<u16>,
    ) -> Result<(), io::Error> {
        if let Some(o) = self.owner.as_mut() {
            return send_batch(&mut o.sock, batch, exclusive);
        }
        let mut sock = Socket::open()?;
        let sent = send_batch(&mut sock, batch, exclusive);
        self.batch_socket = Some(sock);
        sent
    }

    /// The flags attribute of the table a batch (re)creates.
    fn create_flags(&self) -> Option<u32> {
        self.owner.as_ref().map(|o| o.flags).filter(|f| *f != 0)
    }
}

/// Does the kernel take table flags `flags`? Add a throwaway table with
/// them and delete it in the same batch: the flags are checked when the
/// table is added, and the commit of add+delete changes nothing.
fn probe_flags(sock: &mut Socket, flags: u32) -> io::Result<()> {
    let name = format!("lowport-probe-{}", std::process::id());
    let msg = |ty: u8, flags: Option<u32>| {
        let mut req = Request::new(SUBSYS_NFTABLES, ty, NLM_F_ACK, 0, NFPROTO_INET)
            .attr_str(NFTA_TABLE_NAME, &name);
        if let Some(f) = flags {
            req = req.attr(2, &f.to_be_bytes());
        }
        req.finish()
    };
    let add = msg(libc::NFT_MSG_NEWTABLE as u8, Some(flags));
    let del = msg(libc::NFT_MSG_DELTABLE as u8, None);
    let mut batch = Batch::new();
    batch.add(&RawMsg(add), MsgType::Add);
    batch.add(&RawMsg(del), MsgType::Add);
    send_batch(sock, &batch.finalize(), None)
}

/// A prebuilt message whose sequence number the batch sets.
struct RawMsg(Vec<u8>);

// SAFETY: the messages are a few dozen bytes, far below the
// `nft_nlmsg_maxsize()` bytes the batch guarantees at `buf`.
unsafe impl nftnl::NlMsg for RawMsg {
    unsafe fn write(&self, buf: *mut std::os::raw::c_void, seq: u32, _: MsgType) {
        let mut bytes = self.0.clone();
        bytes[8..12].copy_from_slice(&seq.to_ne_bytes());
        // SAFETY: see the impl; `bytes` is a fresh allocation.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len()) };
    }
}

/// The error for a batch refused because another socket owns the table.
fn owned_by(portid: u32) -> FirewallError {
    FirewallError::OwnedByWatch {
        holder: owner::holder(portid),
    }
}

/// EPERM on lowport's table: owned by someone (a running watch), or
/// simply no CAP_NET_ADMIN.
fn refused(
    nft: &mut Nftables,
    e: io::Error,
    wrap: fn(io::Error) -> FirewallError,
) -> FirewallError {
    if e.raw_os_error() == Some(libc::EPERM) && nft.owner.is_none() {
        if let Ok(Some(TableInfo { owner: Some(p), .. })) = nft.table_info() {
            return owned_by(p);
        }
    }
    wrap(e)
}

impl Backend for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn place(&self) -> &'static str {
        "table inet lowport"
    }

    fn apply(&mut self, rules: &RuleSet) -> Result<(), FirewallError> {
        validate(rules)?;
        let reject = std::mem::take(&mut self.reject_next_batch);
        if std::mem::take(&mut self.known_absent) {
            // No table a moment ago (a first install, a boot): create it
            // without the delete. A transaction that deletes nothing leaves
            // the kernel no old rules to free after an RCU grace period, a
            // wait (8-25 ms here) that closing the socket would otherwise
            // sit through. NLM_F_EXCL keeps it safe: if the table appeared
            // since, the kernel refuses and it is replaced as usual.
            match self.send(rules, Install::Create, reject) {
                Err(FirewallError::BatchRejected(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                other => return other,
            }
        }
        self.send(rules, Install::Replace, reject)
    }

    fn remove(&mut self) -> Result<(), FirewallError> {
        let mut batch = Batch::new();
        // Adding first makes "no such table" impossible: removing nothing
        // succeeds. Without a flags attribute the add changes nothing on an
        // existing table, whatever its flags.
        batch.add(&TableMsg { flags: None }, MsgType::Add);
        batch.add(&TableMsg { flags: None }, MsgType::Del);
        let sent = self.send_finalized(&batch.finalize(), None);
        sent.map_err(|e| refused(self, e, FirewallError::Remove))
    }

    fn list(&mut self) -> Result<Option<RuleSet>, FirewallError> {
        self.known_absent = false;
        let read = match self.owner.as_mut() {
            Some(o) => read_table(&mut o.sock),
            None => read_table(&mut Socket::open().map_err(FirewallError::Socket)?),
        };
        let Some((chains, rules)) = read.map_err(FirewallError::List)? else {
            self.known_absent = true;
            return Ok(None);
        };
        decode(&chains, &rules)
            .map(Some)
            .map_err(FirewallError::Foreign)
    }

    fn held_by(&mut self) -> Option<String> {
        if self.owner.is_some() {
            return None;
        }
        match self.table_info() {
            Ok(Some(TableInfo { owner: Some(p), .. })) => Some(owner::holder(p)),
            _ => None,
        }
    }

    fn render(&self, rules: &RuleSet) -> String {
        render(rules)
    }
}

/// How a batch installs the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Install {
    /// Add a table that must not exist yet (NLM_F_EXCL).
    Create,
    /// Add, delete, add: creates the table if it is missing so that the
    /// delete cannot fail, and empties it if it exists — all inside the one
    /// transaction, so a rejected batch leaves the old rules serving.
    Replace,
}

impl Nftables {
    /// Build the batch for `rules` and send it.
    fn send(
        &mut self,
        rules: &RuleSet,
        install: Install,
        reject: bool,
    ) -> Result<(), FirewallError> {
        let batch = build_batch(rules, install, reject, self.create_flags())?;
        let exclusive = match install {
            Install::Create => Some(NFT_MSG_NEWTABLE),
            Install::Replace => None,
        };
        let sent = self.send_finalized(&batch, exclusive);
        sent.map_err(|e| refused(self, e, FirewallError::BatchRejected))
    }
}

/// The batch that installs `rules`: the table (recreated when replacing),
/// its chains, its rules.
fn build_batch(
    rules: &RuleSet,
    install: Install,
    reject: bool,
    flags: Option<u32>,
) -> Result<FinalizedBatch, FirewallError> {
    let table = lowport_table();
    let mut batch = Batch::new();
    match install {
        Install::Create => batch.add(&TableMsg { flags }, MsgType::Add),
        Install::Replace => {
            batch.add(&TableMsg { flags: None }, MsgType::Add);
            batch.add(&TableMsg { flags: None }, MsgType::Del);
            batch.add(&TableMsg { flags }, MsgType::Add);
        }
    }
    let layout = layout(rules);
    let chains: Vec<Chain<'_>> = layout.iter().map(|(spec, _)| spec.chain(&table)).collect();
    for chain in &chains {
        batch.add(chain, MsgType::Add);
    }
    for ((_, specs), chain) in layout.iter().zip(&chains) {
        for spec in specs {
            let mut rule = Rule::new(chain);
            for expr in &spec.exprs {
                rule.add_expr(expr);
            }
            if !spec.comment.is_empty() {
                let comment = CString::new(spec.comment.as_str())
                    .map_err(|_| invalid(&spec.text, "the comment holds a NUL byte"))?;
                rule.set_comment(comment)
                    .map_err(|_| invalid(&spec.text, "the comment is too long"))?;
            }
            batch.add(&rule, MsgType::Add);
        }
    }
    if reject {
        let missing = Chain::new(c"lowport-test-missing-chain", &table);
        let mut rule = Rule::new(&missing);
        rule.add_expr(&Expr::Verdict {
            code: libc::NF_ACCEPT,
        });
        batch.add(&rule, MsgType::Add);
    }
    Ok(batch.finalize())
}

/// For fuzzing and its seeds: the netlink messages of the batch that
/// installs `rules`. Its rule messages have the layout of a dump's.
#[doc(hidden)]
pub fn batch_bytes_for_fuzzing(rules: &RuleSet) -> Result<Vec<u8>, FirewallError> {
    let batch = build_batch(rules, Install::Replace, false, None)?;
    let mut bytes = Vec::new();
    for part in &batch {
        bytes.extend_from_slice(part);
    }
    Ok(bytes)
}

/// For fuzzing: decode netlink messages as a rule dump is decoded (every
/// `NEWRULE` of lowport's table), then into the rule set they implement,
/// with the chains a table for `chains_of` would have. Any input gives an
/// answer, never a panic.
#[doc(hidden)]
pub fn decode_dump_for_fuzzing(buf: &[u8], chains_of: &RuleSet) -> Result<RuleSet, String> {
    let mut rules = Vec::new();
    for msg in netlink::messages(buf) {
        let msg = msg.map_err(|e| e.to_string())?;
        if msg.ty == (u16::from(SUBSYS_NFTABLES) << 8 | libc::NFT_MSG_NEWRULE as u16) {
            let rule = dump::parse_rule(&msg).map_err(|e| e.to_string())?;
            if rule.table == TABLE {
                rules.push(rule);
            }
        }
    }
    let chains: Vec<KernelChain> = layout(chains_of)
        .into_iter()
        .map(|(spec, _)| KernelChain {
            table: TABLE.into(),
            name: spec.name.into(),
            hook: Some(spec.hook as u32),
            prio: Some(spec.priority),
            kind: Some(spec.kind_name().into()),
            policy: Some(libc::NF_ACCEPT as u32),
        })
        .collect();
    decode(&chains, &rules)
}

fn lowport_table() -> Table {
    // TABLE is a constant without NUL bytes.
    let name = CString::new(TABLE).unwrap_or_default();
    Table::new(name, ProtoFamily::Inet)
}

fn invalid(rule: &str, why: &str) -> FirewallError {
    FirewallError::Other(format!(
        "cannot express `{rule}` as an nftables rule: {why}"
    ))
}

/// Reject rule sets nft could not express, or that would not read back as
/// themselves.
fn validate(rules: &RuleSet) -> Result<(), FirewallError> {
    let check_comment = |text: &str, c: &str| {
        if c.len() > MAX_COMMENT {
            return Err(invalid(
                text,
                &format!("comments are at most {MAX_COMMENT} bytes"),
            ));
        }
        if c.contains(['"', '\0', '\n', '\r']) {
            return Err(invalid(
                text,
                "comments cannot hold quotes, NUL bytes or line breaks",
            ));
        }
        Ok(())
    };
    for r in &rules.nat {
        let text = nat_rule(r).text;
        if let Some(addr) = r.daddr {
            if r.family != Some(Family::of(addr)) {
                return Err(invalid(
                    &text,
                    "the family must be that of the destination address",
                ));
            }
        }
        if let NatAction::Dnat { addr, .. } = r.action {
            if r.family != Some(Family::of(addr)) {
                return Err(invalid(
                    &text,
                    "dnat needs the family of its target address",
                ));
            }
        }
        check_comment(&text, &r.comment)?;
    }
    for m in &rules.masquerade {
        check_comment(&masq_rule(m).text, &m.comment)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Chains

/// One of the base chains lowport may create.
#[derive(Debug, PartialEq, Eq)]
struct ChainSpec {
    name: &'static str,
    kind: ChainType,
    hook: nftnl::Hook,
    priority: i32,
}

/// Remote clients: destination NAT before routing.
const PREROUTING: ChainSpec = ChainSpec {
    name: "prerouting",
    kind: ChainType::Nat,
    hook: nftnl::Hook::PreRouting,
    priority: NAT_PRIORITY,
};
/// Local clients: destination NAT of the host's own packets.
const OUTPUT: ChainSpec = ChainSpec {
    name: "output",
    kind: ChainType::Nat,
    hook: nftnl::Hook::Out,
    priority: NAT_PRIORITY,
};
/// Remote targets: masquerade so replies come back through this host.
const POSTROUTING: ChainSpec = ChainSpec {
    name: "postrouting",
    kind: ChainType::Nat,
    hook: nftnl::Hook::PostRouting,
    priority: SNAT_PRIORITY,
};
/// `route_localnet` guard: at raw priority, before conntrack and NAT.
const GUARD: ChainSpec = ChainSpec {
    name: "guard",
    kind: ChainType::Filter,
    hook: nftnl::Hook::PreRouting,
    priority: GUARD_PRIORITY,
};

const ALL_CHAINS: [&ChainSpec; 4] = [&PREROUTING, &OUTPUT, &POSTROUTING, &GUARD];

impl ChainSpec {
    fn kind_name(&self) -> &'static str {
        match self.kind {
            ChainType::Nat => "nat",
            ChainType::Filter => "filter",
            ChainType::Route => "route",
        }
    }

    fn hook_name(&self) -> &'static str {
        match self.hook {
            nftnl::Hook::PreRouting => "prerouting",
            nftnl::Hook::Out => "output",
            nftnl::Hook::PostRouting => "postrouting",
            nftnl::Hook::In => "input",
            nftnl::Hook::Forward => "forward",
            nftnl::Hook::Ingress => "ingress",
        }
    }

    fn chain<'a>(&self, table: &'a Table) -> Chain<'a> {
        // Chain names are constants without NUL bytes.
        let mut chain = Chain::new(CString::new(self.name).unwrap_or_default(), table);
        chain.set_hook(self.hook, self.priority);
        chain.set_type(self.kind);
        chain.set_policy(Policy::Accept);
        chain
    }

    /// Does a chain the kernel listed match this spec exactly?
    fn matches(&self, c: &KernelChain) -> bool {
        c.name == self.name
            && c.hook == Some(self.hook as u32)
            && c.prio == Some(self.priority)
            && c.kind.as_deref() == Some(self.kind_name())
            && c.policy == Some(libc::NF_ACCEPT as u32)
    }
}

/// The chains a rule set needs, each with its rules, in creation order.
/// A chain exists only when it has rules: an empty NAT chain would still
/// register NAT hooks for nothing.
fn layout(rules: &RuleSet) -> Vec<(&'static ChainSpec, Vec<RuleSpec>)> {
    let mut out = Vec::new();
    let pre: Vec<RuleSpec> = rules.on(Hook::Prerouting).map(nat_rule).collect();
    let local: Vec<RuleSpec> = rules.on(Hook::Output).map(nat_rule).collect();
    let masq: Vec<RuleSpec> = rules.masquerade.iter().map(masq_rule).collect();
    for (spec, specs) in [(&PREROUTING, pre), (&OUTPUT, local), (&POSTROUTING, masq)] {
        if !specs.is_empty() {
            out.push((spec, specs));
        }
    }
    if rules.loopback_guard {
        out.push((&GUARD, vec![guard_rule()]));
    }
    out
}

// ---------------------------------------------------------------------------
// Rules: each helper is one nft phrase and the expressions nft makes of it.

/// A piece of a rule: its expressions and its nft text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Phrase {
    exprs: Vec<Expr>,
    text: String,
}

/// A whole rule.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleSpec {
    exprs: Vec<Expr>,
    /// The nft line, comment included.
    text: String,
    comment: String,
}

impl RuleSpec {
    fn new(phrases: impl IntoIterator<Item = Phrase>, comment: &str) -> RuleSpec {
        let mut exprs = Vec::new();
        let mut words = Vec::new();
        for p in phrases {
            exprs.extend(p.exprs);
            words.push(p.text);
        }
        if !comment.is_empty() {
            words.push(format!("comment \"{comment}\""));
        }
        RuleSpec {
            exprs,
            text: words.join(" "),
            comment: comment.to_owned(),
        }
    }
}

fn phrase(text: impl Into<String>, exprs: Vec<Expr>) -> Phrase {
    Phrase {
        exprs,
        text: text.into(),
    }
}

fn load_meta(key: i32) -> Expr {
    Expr::Meta {
        key: key as u32,
        dreg: REG1,
    }
}

fn cmp(op: i32, data: impl Into<Vec<u8>>) -> Expr {
    Expr::Cmp {
        sreg: REG1,
        op: op as u32,
        data: data.into(),
    }
}

fn load_payload(base: i32, offset: u32, len: u32) -> Expr {
    Expr::Payload {
        base: base as u32,
        offset,
        len,
        dreg: REG1,
    }
}

fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => libc::NFPROTO_IPV4 as u8,
        Family::V6 => libc::NFPROTO_IPV6 as u8,
    }
}

fn ip_keyword(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The nfproto dependency nft inserts before anything family-specific in an
/// `inet` table.
fn nfproto_is(family: Family) -> Vec<Expr> {
    vec![
        load_meta(libc::NFT_META_NFPROTO),
        cmp(libc::NFT_CMP_EQ, [nfproto(family)]),
    ]
}

/// `meta nfproto ipv4|ipv6`
fn meta_nfproto(family: Family) -> Phrase {
    phrase(format!("meta nfproto {family}"), nfproto_is(family))
}

/// `fib daddr type local`: the destination is one of this host's addresses.
fn fib_daddr_local() -> Phrase {
    phrase(
        "fib daddr type local",
        vec![
            Expr::Fib {
                flags: NFTA_FIB_F_DADDR,
                result: NFT_FIB_RESULT_ADDRTYPE,
                dreg: REG1,
            },
            cmp(libc::NFT_CMP_EQ, u32::from(libc::RTN_LOCAL).to_ne_bytes()),
        ],
    )
}

/// `ip daddr A` / `ip6 daddr A` (with its nfproto dependency).
fn ip_daddr(addr: IpAddr) -> Phrase {
    let family = Family::of(addr);
    let (offset, len) = match addr {
        IpAddr::V4(_) => (16, 4),
        IpAddr::V6(_) => (24, 16),
    };
    let mut exprs = nfproto_is(family);
    exprs.push(load_payload(libc::NFT_PAYLOAD_NETWORK_HEADER, offset, len));
    exprs.push(cmp(libc::NFT_CMP_EQ, addr_bytes(addr)));
    phrase(format!("{} daddr {addr}", ip_keyword(family)), exprs)
}

/// `tcp dport P` / `udp dport P` (with its l4proto dependency).
fn l4_dport(l4: L4, port: u16) -> Phrase {
    phrase(
        format!("{l4} dport {port}"),
        vec![
            load_meta(libc::NFT_META_L4PROTO),
            cmp(libc::NFT_CMP_EQ, [l4.ip_proto()]),
            load_payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
            cmp(libc::NFT_CMP_EQ, port.to_be_bytes()),
        ],
    )
}

/// `redirect to :T`
fn redirect_to(port: u16) -> Phrase {
    phrase(
        format!("redirect to :{port}"),
        vec![
            Expr::Immediate {
                dreg: REG1,
                data: port.to_be_bytes().to_vec(),
            },
            Expr::Redir {
                reg_proto: REG1,
                flags: NF_NAT_RANGE_PROTO_SPECIFIED,
            },
        ],
    )
}

/// `dnat ip to A:T` / `dnat ip6 to [A]:T`
fn dnat_to(addr: IpAddr, port: u16) -> Phrase {
    let family = Family::of(addr);
    let target = match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    };
    phrase(
        format!("dnat {} to {target}", ip_keyword(family)),
        vec![
            Expr::Immediate {
                dreg: REG1,
                data: addr_bytes(addr),
            },
            Expr::Immediate {
                dreg: REG2,
                data: port.to_be_bytes().to_vec(),
            },
            Expr::Nat {
                nat_type: libc::NFT_NAT_DNAT as u32,
                family: u32::from(nfproto(family)),
                reg_addr: REG1,
                reg_proto: REG2,
                flags: NF_NAT_RANGE_PROTO_SPECIFIED,
            },
        ],
    )
}

/// `ct status dnat`: the connection's destination was translated.
fn ct_status_dnat() -> Phrase {
    phrase(
        "ct status dnat",
        vec![
            Expr::Ct {
                key: libc::NFT_CT_STATUS as u32,
                dreg: REG1,
            },
            Expr::Bitwise {
                sreg: REG1,
                dreg: REG1,
                len: 4,
                mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            },
            cmp(libc::NFT_CMP_NEQ, [0u8; 4]),
        ],
    )
}

/// `masquerade`
fn masquerade() -> Phrase {
    phrase("masquerade", vec![Expr::Masq])
}

/// `iifname != "NAME"`
fn iifname_ne(name: &str) -> Phrase {
    let mut data = [0u8; IFNAMSIZ];
    let n = name.len().min(IFNAMSIZ - 1);
    data[..n].copy_from_slice(&name.as_bytes()[..n]);
    phrase(
        format!("iifname != \"{name}\""),
        vec![
            load_meta(libc::NFT_META_IIFNAME),
            cmp(libc::NFT_CMP_NEQ, data),
        ],
    )
}

/// `ip daddr 127.0.0.0/8` (nft loads and compares just the first byte).
fn ip_daddr_loopback_net() -> Phrase {
    let mut exprs = nfproto_is(Family::V4);
    exprs.push(load_payload(libc::NFT_PAYLOAD_NETWORK_HEADER, 16, 1));
    exprs.push(cmp(libc::NFT_CMP_EQ, [127u8]));
    phrase("ip daddr 127.0.0.0/8", exprs)
}

/// `drop`
fn drop_packet() -> Phrase {
    phrase(
        "drop",
        vec![Expr::Verdict {
            code: libc::NF_DROP,
        }],
    )
}

/// A destination NAT rule:
/// `[fib daddr type local] [meta nfproto F | ip daddr A] tcp dport P redirect to :T|dnat ...`.
fn nat_rule(r: &NatRule) -> RuleSpec {
    let mut p = Vec::new();
    // Output rules only catch local destinations: the host's own
    // connections to port 80 of other machines must go out untouched.
    if r.hook == Hook::Output {
        p.push(fib_daddr_local());
    }
    match (r.daddr, r.family) {
        // `ip daddr` brings its own nfproto dependency.
        (Some(addr), _) => p.push(ip_daddr(addr)),
        (None, Some(family)) => p.push(meta_nfproto(family)),
        (None, None) => {}
    }
    p.push(l4_dport(r.l4, r.dport));
    p.push(match r.action {
        NatAction::Redirect { port } => redirect_to(port),
        NatAction::Dnat { addr, port } => dnat_to(addr, port),
    });
    RuleSpec::new(p, &r.comment)
}

/// `ct status dnat ip daddr A tcp dport P masquerade`: only connections we
/// sent on to a remote target, so no other traffic to that host changes.
fn masq_rule(m: &MasqRule) -> RuleSpec {
    RuleSpec::new(
        [
            ct_status_dnat(),
            ip_daddr(m.daddr),
            l4_dport(m.l4, m.dport),
            masquerade(),
        ],
        &m.comment,
    )
}

/// `iifname != "lo" ip daddr 127.0.0.0/8 drop`: with `route_localnet` on,
/// neighbours could otherwise reach services bound to 127.0.0.1.
fn guard_rule() -> RuleSpec {
    RuleSpec::new(
        [iifname_ne("lo"), ip_daddr_loopback_net(), drop_packet()],
        GUARD_COMMENT,
    )
}

// ---------------------------------------------------------------------------
// Render

/// The `nft -f` script equivalent to `apply`: the same add/delete/add
/// transaction, the same chains and rules.
pub fn render(rules: &RuleSet) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#!/usr/sbin/nft -f");
    let _ = writeln!(
        s,
        "# lowport: replace table inet {TABLE} in one transaction (add, delete, add)."
    );
    let _ = writeln!(s, "table inet {TABLE} {{}}");
    let _ = writeln!(s, "delete table inet {TABLE}");
    let _ = writeln!(s, "table inet {TABLE} {{");
    for (i, (spec, specs)) in layout(rules).iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let _ = writeln!(s, "\tchain {} {{", spec.name);
        let _ = writeln!(
            s,
            "\t\ttype {} hook {} priority {}; policy accept;",
            spec.kind_name(),
            spec.hook_name(),
            spec.priority
        );
        for r in specs {
            let _ = writeln!(s, "\t\t{}", r.text);
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    s
}

// ---------------------------------------------------------------------------
// Netlink: send, read back

/// Send a finalized batch as one datagram (the kernel needs begin and end
/// in the same message) and wait for its answer: one ack, or the errors.
/// Messages of type `exclusive` get NLM_F_EXCL (the crate has no way to ask).
fn send_batch(sock: &mut Socket, batch: &FinalizedBatch, exclusive: Option<u16>) -> io::Result<()> {
    let mut bytes = Vec::new();
    for part in batch {
        bytes.extend_from_slice(part);
    }
    if let Some(ty) = exclusive {
        netlink::add_flags(&mut bytes, ty, netlink::NLM_F_EXCL)?;
    }
    let last = netlink::ack_last_only(&mut bytes)?
        .ok_or_else(|| io::Error::other("netlink batch asks for no ack"))?;
    // Room for an error per message too: a bad batch can fail many.
    sock.fit_buffers(bytes.len(), batch.sequence_numbers().len());
    sock.send(&bytes)?;
    sock.wait_batch(batch.sequence_numbers(), last)
}

/// The table's chains and rules, or `None` when there is no table.
fn read_table(sock: &mut Socket) -> io::Result<Option<(Vec<KernelChain>, Vec<KernelRule>)>> {
    let get_table = Request::new(
        SUBSYS_NFTABLES,
        libc::NFT_MSG_GETTABLE as u8,
        NLM_F_ACK,
        1,
        NFPROTO_INET,
    )
    .attr_str(NFTA_TABLE_NAME, TABLE)
    .finish();
    match sock.transact(&get_table, 1, |_| Ok(())) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        other => other?,
    }

    let mut chains = Vec::new();
    let get_chains = Request::new(
        SUBSYS_NFTABLES,
        libc::NFT_MSG_GETCHAIN as u8,
        NLM_F_DUMP,
        2,
        NFPROTO_INET,
    )
    .attr_str(NFTA_CHAIN_TABLE, TABLE)
    .finish();
    sock.transact(&get_chains, 2, |msg| {
        if is_nft_msg(&msg, libc::NFT_MSG_NEWCHAIN) {
            let chain = sys::parse_chain(msg.raw)?;
            if chain.table == TABLE {
                chains.push(chain);
            }
        }
        Ok(())
    })?;

    let mut rules = Vec::new();
    let get_rules = Request::new(
        SUBSYS_NFTABLES,
        libc::NFT_MSG_GETRULE as u8,
        NLM_F_DUMP,
        3,
        NFPROTO_INET,
    )
    .attr_str(NFTA_RULE_TABLE, TABLE)
    .finish();
    sock.transact(&get_rules, 3, |msg| {
        if is_nft_msg(&msg, libc::NFT_MSG_NEWRULE) {
            let rule = dump::parse_rule(&msg)?;
            if rule.table == TABLE {
                rules.push(rule);
            }
        }
        Ok(())
    })?;
    Ok(Some((chains, rules)))
}

/// Names of the chains in the `ip` and `ip6` tables called one of
/// `tables`, read over netlink. iptables-nft keeps its tables there, so
/// this is what `iptables-nft-save -t TABLE` would list as chains, without
/// starting four processes to find out.
pub fn iptables_nft_chains(tables: &[&str]) -> io::Result<Vec<String>> {
    let mut sock = Socket::open()?;
    let mut names = Vec::new();
    for (seq, family) in [(1, libc::NFPROTO_IPV4 as u8), (2, libc::NFPROTO_IPV6 as u8)] {
        let request = Request::new(
            SUBSYS_NFTABLES,
            libc::NFT_MSG_GETCHAIN as u8,
            NLM_F_DUMP,
            seq,
            family,
        )
        .finish();
        sock.transact(&request, seq, |msg| {
            let new_chain = u16::from(SUBSYS_NFTABLES) << 8 | libc::NFT_MSG_NEWCHAIN as u16;
            if msg.ty == new_chain && msg.nf_family() == Some(family) {
                let chain = sys::parse_chain(msg.raw)?;
                if tables.contains(&chain.table.as_str()) {
                    names.push(chain.name);
                }
            }
            Ok(())
        })?;
    }
    Ok(names)
}

fn is_nft_msg(msg: &netlink::Msg<'_>, ty: i32) -> bool {
    msg.ty == (u16::from(SUBSYS_NFTABLES) << 8 | ty as u16) && msg.nf_family() == Some(NFPROTO_INET)
}

// ---------------------------------------------------------------------------
// Decode

/// The comment in nft's rule userdata: TLVs of (type u8, length u8, value),
/// type 0 being the comment, NUL-terminated.
fn udata_comment(udata: &[u8]) -> Option<String> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if ty == UDATA_COMMENT {
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}

/// Kernel chains and rules → the rule set they implement, or a description
/// of the first thing lowport did not write.
fn decode(chains: &[KernelChain], rules: &[KernelRule]) -> Result<RuleSet, String> {
    for c in chains {
        if !ALL_CHAINS.iter().any(|spec| spec.matches(c)) {
            return Err(format!(
                "chain {} (type {:?}, hook {:?}, priority {:?})",
                c.name, c.kind, c.hook, c.prio
            ));
        }
    }
    let mut set = RuleSet::default();
    let mut local = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let comment = udata_comment(&r.userdata).unwrap_or_default();
        let foreign = || {
            let shape: Vec<String> = r.exprs.iter().map(Expr::kind).collect();
            format!(
                "rule #{} in chain {} with comment \"{comment}\": [{}]",
                i + 1,
                r.chain,
                shape.join(", ")
            )
        };
        match r.chain.as_str() {
            "prerouting" | "output" => {
                let hook = if r.chain == "output" {
                    Hook::Output
                } else {
                    Hook::Prerouting
                };
                let rule = recognise_nat(hook, &r.exprs, &comment)
                    .filter(|n| nat_rule(n).exprs == r.exprs)
                    .ok_or_else(foreign)?;
                match hook {
                    Hook::Prerouting => set.nat.push(rule),
                    Hook::Output => local.push(rule),
                }
            }
            "postrouting" => {
                let rule = recognise_masq(&r.exprs, &comment)
                    .filter(|m| masq_rule(m).exprs == r.exprs)
                    .ok_or_else(foreign)?;
                set.masquerade.push(rule);
            }
            "guard" if !set.loopback_guard && r.exprs == guard_rule().exprs => {
                set.loopback_guard = true;
            }
            _ => return Err(foreign()),
        }
    }
    set.nat.extend(local);
    Ok(set)
}

/// Pairs (load, compare) in a rule, for picking values out.
fn compared<'a>(exprs: &'a [Expr], load: &Expr) -> Option<&'a [u8]> {
    exprs.windows(2).find_map(|w| match (&w[0], &w[1]) {
        (l, Expr::Cmp { data, .. }) if l == load => Some(data.as_slice()),
        _ => None,
    })
}

fn family_of_nfproto(data: &[u8]) -> Option<Family> {
    match data {
        [p] if i32::from(*p) == libc::NFPROTO_IPV4 => Some(Family::V4),
        [p] if i32::from(*p) == libc::NFPROTO_IPV6 => Some(Family::V6),
        _ => None,
    }
}

fn ip_from(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?))),
        _ => None,
    }
}

fn port_from(data: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(data.try_into().ok()?))
}

/// The match parts common to NAT and masquerade rules.
struct Matched {
    family: Option<Family>,
    daddr: Option<IpAddr>,
    l4: L4,
    dport: u16,
}

fn recognise_match(exprs: &[Expr]) -> Option<Matched> {
    let family = compared(exprs, &load_meta(libc::NFT_META_NFPROTO)).and_then(family_of_nfproto);
    let daddr = compared(
        exprs,
        &load_payload(libc::NFT_PAYLOAD_NETWORK_HEADER, 16, 4),
    )
    .or_else(|| {
        compared(
            exprs,
            &load_payload(libc::NFT_PAYLOAD_NETWORK_HEADER, 24, 16),
        )
    })
    .and_then(ip_from);
    let l4 = match compared(exprs, &load_meta(libc::NFT_META_L4PROTO))? {
        [p] if *p == L4::Tcp.ip_proto() => L4::Tcp,
        [p] if *p == L4::Udp.ip_proto() => L4::Udp,
        _ => return None,
    };
    let dport = port_from(compared(
        exprs,
        &load_payload(libc::NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
    )?)?;
    Some(Matched {
        family,
        daddr,
        l4,
        dport,
    })
}

/// Read a NAT rule's values; the caller checks the shape by rebuilding it.
fn recognise_nat(hook: Hook, exprs: &[Expr], comment: &str) -> Option<NatRule> {
    let m = recognise_match(exprs)?;
    let imm = |reg: u32| {
        exprs.iter().find_map(|e| match e {
            Expr::Immediate { dreg, data } if *dreg == reg => Some(data.as_slice()),
            _ => None,
        })
    };
    let action = match exprs.last()? {
        Expr::Redir { .. } => NatAction::Redirect {
            port: port_from(imm(REG1)?)?,
        },
        Expr::Nat { .. } => NatAction::Dnat {
            addr: ip_from(imm(REG1)?)?,
            port: port_from(imm(REG2)?)?,
        },
        _ => return None,
    };
    Some(NatRule {
        hook,
        family: m.family,
        daddr: m.daddr,
        l4: m.l4,
        dport: m.dport,
        action,
        comment: comment.to_owned(),
    })
}

/// Read a masquerade rule's values; the caller checks the shape.
fn recognise_masq(exprs: &[Expr], comment: &str) -> Option<MasqRule> {
    let m = recognise_match(exprs)?;
    Some(MasqRule {
        daddr: m.daddr?,
        l4: m.l4,
        dport: m.dport,
        comment: comment.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nat_r(
        hook: Hook,
        family: Option<Family>,
        daddr: Option<&str>,
        l4: L4,
        action: NatAction,
    ) -> NatRule {
        NatRule {
            hook,
            family,
            daddr: daddr.map(v4),
            l4,
            dport: 80,
            action,
            comment: "web".into(),
        }
    }

    /// A rule set with every shape lowport writes.
    pub(super) fn every_shape() -> RuleSet {
        let redirect = NatAction::Redirect { port: 8080 };
        let dnat4 = NatAction::Dnat {
            addr: v4("127.0.0.1"),
            port: 8080,
        };
        let dnat6 = NatAction::Dnat {
            addr: v4("fd00::5"),
            port: 8080,
        };
        let mut nat = Vec::new();
        for hook in [Hook::Prerouting, Hook::Output] {
            nat.push(nat_r(hook, None, None, L4::Tcp, redirect));
            nat.push(nat_r(hook, Some(Family::V4), None, L4::Udp, redirect));
            nat.push(nat_r(hook, Some(Family::V6), None, L4::Tcp, redirect));
            nat.push(nat_r(
                hook,
                Some(Family::V4),
                Some("10.0.0.1"),
                L4::Tcp,
                redirect,
            ));
            nat.push(nat_r(
                hook,
                Some(Family::V6),
                Some("fd00::1"),
                L4::Tcp,
                redirect,
            ));
            nat.push(nat_r(hook, Some(Family::V4), None, L4::Tcp, dnat4));
            nat.push(nat_r(hook, Some(Family::V6), None, L4::Udp, dnat6));
            nat.push(nat_r(
                hook,
                Some(Family::V4),
                Some("10.0.0.1"),
                L4::Tcp,
                dnat4,
            ));
        }
        RuleSet {
            nat,
            masquerade: vec![
                MasqRule {
                    daddr: v4("10.0.0.5"),
                    l4: L4::Tcp,
                    dport: 8080,
                    comment: "far".into(),
                },
                MasqRule {
                    daddr: v4("fd00::5"),
                    l4: L4::Udp,
                    dport: 8443,
                    comment: "far6".into(),
                },
            ],
            loopback_guard: true,
        }
    }

    fn as_kernel(rules: &RuleSet) -> (Vec<KernelChain>, Vec<KernelRule>) {
        let mut chains = Vec::new();
        let mut krules = Vec::new();
        for (spec, specs) in layout(rules) {
            chains.push(KernelChain {
                table: TABLE.into(),
                name: spec.name.into(),
                hook: Some(spec.hook as u32),
                prio: Some(spec.priority),
                kind: Some(spec.kind_name().into()),
                policy: Some(libc::NF_ACCEPT as u32),
            });
            for r in specs {
                let mut udata = vec![0u8, (r.comment.len() + 1) as u8];
                udata.extend_from_slice(r.comment.as_bytes());
                udata.push(0);
                krules.push(KernelRule {
                    table: TABLE.into(),
                    chain: spec.name.into(),
                    exprs: r.exprs.clone(),
                    userdata: udata,
                });
            }
        }
        (chains, krules)
    }

    #[test]
    fn every_shape_decodes_to_itself() {
        let rs = every_shape();
        validate(&rs).unwrap();
        let (chains, rules) = as_kernel(&rs);
        assert_eq!(decode(&chains, &rules).unwrap(), rs);
    }

    #[test]
    fn a_batch_decodes_as_a_dump_of_the_same_rules() {
        let rs = every_shape();
        let bytes = batch_bytes_for_fuzzing(&rs).unwrap();
        assert_eq!(decode_dump_for_fuzzing(&bytes, &rs), Ok(rs));
    }

    #[test]
    fn empty_rule_set_has_no_chains() {
        assert!(layout(&RuleSet::default()).is_empty());
        assert_eq!(decode(&[], &[]).unwrap(), RuleSet::default());
    }

    #[test]
    fn rule_texts_read_like_nft() {
        let rs = every_shape();
        let texts: Vec<String> = layout(&rs)
            .into_iter()
            .flat_map(|(_, s)| s.into_iter().map(|r| r.text))
            .collect();
        assert_eq!(texts[0], "tcp dport 80 redirect to :8080 comment \"web\"");
        assert_eq!(
            texts[6],
            "meta nfproto ipv6 udp dport 80 dnat ip6 to [fd00::5]:8080 comment \"web\""
        );
        assert_eq!(
            texts[11],
            "fib daddr type local ip daddr 10.0.0.1 tcp dport 80 redirect to :8080 comment \"web\""
        );
        assert_eq!(
            texts[16],
            "ct status dnat ip daddr 10.0.0.5 tcp dport 8080 masquerade comment \"far\""
        );
        assert_eq!(
            texts[18],
            format!("iifname != \"lo\" ip daddr 127.0.0.0/8 drop comment \"{GUARD_COMMENT}\"")
        );
    }

    #[test]
    fn render_replaces_the_table_atomically() {
        let script = render(&every_shape());
        let lines: Vec<&str> = script.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines[0], "table inet lowport {}");
        assert_eq!(lines[1], "delete table inet lowport");
        assert_eq!(lines[2], "table inet lowport {");
        assert!(script.contains("\t\ttype nat hook output priority -105; policy accept;\n"));
        assert!(script.contains("\t\ttype filter hook prerouting priority -300; policy accept;\n"));
        assert!(script.contains("\t\ttype nat hook postrouting priority 95; policy accept;\n"));
    }

    #[test]
    fn unknown_shapes_are_foreign() {
        let rs = every_shape();
        let (chains, mut rules) = as_kernel(&rs);
        // A counter nft would print as `counter`: not lowport's.
        rules[3].exprs.insert(0, Expr::Other("counter".into()));
        let err = decode(&chains, &rules).unwrap_err();
        assert!(err.contains("rule #4 in chain prerouting"), "{err}");

        // Same values, different shape: a redirect without its l4proto check.
        let (chains, mut rules) = as_kernel(&rs);
        rules[0].exprs.drain(0..2);
        assert!(decode(&chains, &rules).is_err());

        // A chain at another priority.
        let (mut chains, rules) = as_kernel(&rs);
        chains[0].prio = Some(-100);
        assert!(decode(&chains, &rules)
            .unwrap_err()
            .contains("chain prerouting"));
    }

    #[test]
    fn invalid_rule_sets_are_refused_before_sending() {
        let mut rs = every_shape();
        rs.nat[0].comment = "say \"hi\"".into();
        assert!(validate(&rs).is_err());
        let mut rs = every_shape();
        rs.nat[0].comment = "x".repeat(MAX_COMMENT + 1);
        assert!(validate(&rs).is_err());
        let mut rs = every_shape();
        rs.nat[5].family = None; // dnat without a family
        assert!(validate(&rs).is_err());
        let mut rs = every_shape();
        rs.nat[3].family = Some(Family::V6); // v4 daddr in a v6 rule
        assert!(validate(&rs).is_err());
    }

    #[test]
    fn comment_userdata_is_parsed_like_nft_writes_it() {
        assert_eq!(udata_comment(b"\x00\x04web\x00").as_deref(), Some("web"));
        assert_eq!(
            udata_comment(b"\x01\x01x\x00\x03ab\x00").as_deref(),
            Some("ab")
        );
        assert_eq!(udata_comment(b"\x00\x09short"), None);
        assert_eq!(udata_comment(b""), None);
    }
}

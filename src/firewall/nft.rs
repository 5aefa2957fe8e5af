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
//!
//! This file holds the backend (batches, the watch socket, reading the
//! table); `rules` builds the chains and rules, `dump` decodes the kernel's
//! rule messages, `decode` turns them back into a [`RuleSet`].

mod decode;
mod dump;
pub mod monitor;
pub(crate) mod netlink;
pub mod owner;
mod rules;
mod sys;

use std::ffi::CString;
use std::io;

use nftnl::{Batch, Chain, FinalizedBatch, MsgType, ProtoFamily, Rule, Table};

use self::owner::{TableInfo, TableMsg, F_OWNER, F_PERSIST};

use self::decode::decode;
use self::netlink::{Request, Socket, NLM_F_ACK, NLM_F_DUMP};
use self::rules::{invalid, layout, validate};
use self::sys::{Expr, KernelChain, KernelRule};
use super::plan::RuleSet;
use super::{Backend, FirewallError, TABLE};

pub use self::rules::{render, GUARD_COMMENT, MAX_COMMENT};

// Kernel constants `libc` does not carry (linux/netfilter/nf_tables.h).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_RULE_TABLE: u16 = 1;

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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::firewall::plan::{Family, Hook, MasqRule, NatAction, NatRule};
    use crate::mapping::L4;

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

    #[test]
    fn a_batch_decodes_as_a_dump_of_the_same_rules() {
        let rs = every_shape();
        let bytes = batch_bytes_for_fuzzing(&rs).unwrap();
        assert_eq!(decode_dump_for_fuzzing(&bytes, &rs), Ok(rs));
    }
}

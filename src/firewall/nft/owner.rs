//! Table ownership (`NFT_TABLE_F_OWNER`, Linux 5.12) and persistence
//! (`NFT_TABLE_F_PERSIST`, Linux 6.9), as `rules watch` uses them.
//!
//! What the kernel does (net/netfilter/nf_tables_api.c):
//! - An owned table records the port id of the netlink socket that created
//!   it. Every lookup that modifies (`nft_table_lookup` with a port id)
//!   fails with EPERM for any other socket: `nft delete table`, adding a
//!   rule, iptables-nft (which never touches `inet` tables anyway). Reads
//!   pass port id 0 and work for everyone.
//! - `flush ruleset` (`nft_flush`) skips tables owned by another socket.
//! - When the owner socket closes (`nft_rcv_nl_event`), an owned table is
//!   deleted, unless it also has PERSIST: then only OWNER is cleared and
//!   the table, rules and all, stays as an "orphan".
//! - An orphan is adopted by sending NEWTABLE with OWNER|PERSIST
//!   (`nf_tables_updtable`): the new socket becomes the owner, nothing
//!   else changes. Any other flag change on an owned or persistent table
//!   is EOPNOTSUPP, and so is sending the flags attribute at all with a
//!   value other than the table's (dropping OWNER, dropping PERSIST).
//! - Kernels that do not know a flag refuse it with EOPNOTSUPP.
//!
//! Because of the last two points the table messages are built here, not
//! with `nftnl::Table`, which always sends a flags attribute (0).

use std::io;
use std::os::raw::c_void;

use super::netlink::{Request, Socket, NLM_F_ACK};
use super::{NFPROTO_INET, NFTA_TABLE_NAME, SUBSYS_NFTABLES};
use crate::firewall::TABLE;

/// `NFT_TABLE_F_OWNER`: the table goes with the socket that made it.
pub const F_OWNER: u32 = 0x2;
/// `NFT_TABLE_F_PERSIST`: ... unless persistent, then it stays, unowned.
pub const F_PERSIST: u32 = 0x4;

/// `enum nft_table_attributes`.
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_TABLE_OWNER: u16 = 7;

/// A NEWTABLE or DELTABLE message for `table inet lowport`, with a flags
/// attribute only when `flags` is given: without it, NEWTABLE on an
/// existing table changes nothing (whatever its flags), which is what the
/// first "add" of a replace batch needs.
pub(crate) struct TableMsg {
    pub flags: Option<u32>,
}

// SAFETY: `write` writes one netlink message of at most a few dozen bytes
// (a header, the table name and a u32), far below the
// `nft_nlmsg_maxsize()` bytes the batch guarantees at `buf`.
unsafe impl nftnl::NlMsg for TableMsg {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: nftnl::MsgType) {
        let ty = match msg_type {
            nftnl::MsgType::Add => libc::NFT_MSG_NEWTABLE,
            nftnl::MsgType::Del => libc::NFT_MSG_DELTABLE,
        };
        let mut req = Request::new(SUBSYS_NFTABLES, ty as u8, NLM_F_ACK, seq, NFPROTO_INET)
            .attr_str(NFTA_TABLE_NAME, TABLE);
        if let Some(flags) = self.flags {
            req = req.attr(NFTA_TABLE_FLAGS, &flags.to_be_bytes());
        }
        let bytes = req.finish();
        // SAFETY: see the impl: `buf` has room for `bytes`, and the two
        // buffers cannot overlap (`bytes` was just allocated).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len()) };
    }
}

/// What the kernel says about lowport's table itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableInfo {
    pub flags: u32,
    /// Port id of the owner socket, when the table is owned.
    pub owner: Option<u32>,
}

impl TableInfo {
    /// Persistent and not owned: left behind by a watch that stopped
    /// without removing it, waiting to be adopted.
    pub fn is_orphan(&self) -> bool {
        self.flags & (F_OWNER | F_PERSIST) == F_PERSIST
    }
}

/// The flags and owner of `table inet lowport`, `None` when it does not exist.
pub(crate) fn table_info(sock: &mut Socket) -> io::Result<Option<TableInfo>> {
    let get = Request::new(
        SUBSYS_NFTABLES,
        libc::NFT_MSG_GETTABLE as u8,
        NLM_F_ACK,
        1,
        NFPROTO_INET,
    )
    .attr_str(NFTA_TABLE_NAME, TABLE)
    .finish();
    let mut info = None;
    let newtable = u16::from(SUBSYS_NFTABLES) << 8 | libc::NFT_MSG_NEWTABLE as u16;
    match sock.transact(&get, 1, |msg| {
        if msg.ty == newtable {
            let attrs = msg.nf_attrs();
            let flags = attrs.clone().get(NFTA_TABLE_FLAGS).and_then(|a| a.be32());
            let owner = attrs.get(NFTA_TABLE_OWNER).and_then(|a| a.be32());
            let flags = flags.unwrap_or(0);
            info = Some(TableInfo {
                flags,
                owner: owner.filter(|_| flags & F_OWNER != 0),
            });
        }
        Ok(())
    }) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        other => other?,
    }
    Ok(info)
}

/// Who holds netlink port `portid` of this network namespace, for
/// messages: "lowport rules watch (pid 1234)". Found through
/// /proc/net/netlink (port id to socket inode) and the open files of
/// every process; a description of the port when that fails.
pub fn holder(portid: u32) -> String {
    match holder_pid(portid) {
        Some(pid) => {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let words: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|w| !w.is_empty())
                .map(|w| String::from_utf8_lossy(w).into_owned())
                .collect();
            let is_watch = words.iter().any(|w| w == "watch")
                && words.first().is_some_and(|w| w.ends_with("lowport"));
            if is_watch {
                format!("lowport rules watch (pid {pid})")
            } else {
                format!("process {pid} ({})", words.join(" "))
            }
        }
        None => format!("the process with netlink port {portid}"),
    }
}

/// The pid of the process that has netfilter netlink port `portid` open.
pub fn holder_pid(portid: u32) -> Option<u32> {
    // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
    let table = std::fs::read_to_string("/proc/net/netlink").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let proto: i32 = cols.get(1)?.parse().ok()?;
        let port: u32 = cols.get(2)?.parse().ok()?;
        (proto == libc::NETLINK_NETFILTER && port == portid).then(|| cols.get(9).copied())?
    })?;
    let target = format!("socket:[{inode}]");
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_messages_carry_flags_only_when_asked() {
        let mut buf = vec![0u8; nftnl::nft_nlmsg_maxsize() as usize];
        for (flags, want_len) in [(None, 32), (Some(F_OWNER | F_PERSIST), 40)] {
            let msg = TableMsg { flags };
            // SAFETY: the buffer has the size `NlMsg::write` requires.
            unsafe { nftnl::NlMsg::write(&msg, buf.as_mut_ptr().cast(), 9, nftnl::MsgType::Add) };
            let len = u32::from_ne_bytes(buf[..4].try_into().unwrap()) as usize;
            assert_eq!(len, want_len);
            let m = super::super::netlink::messages(&buf[..len])
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(m.seq, 9);
            let attrs = m.nf_attrs();
            assert_eq!(
                attrs.clone().get(NFTA_TABLE_NAME).unwrap().data,
                b"lowport\0"
            );
            assert_eq!(attrs.get(NFTA_TABLE_FLAGS).and_then(|a| a.be32()), flags);
        }
    }

    #[test]
    fn orphan_is_persist_without_owner() {
        let t = |flags| TableInfo { flags, owner: None };
        assert!(t(F_PERSIST).is_orphan());
        assert!(!t(F_PERSIST | F_OWNER).is_orphan());
        assert!(!t(0).is_orphan());
    }
}

//! nftables change notifications (`NFNLGRP_NFTABLES`): what `nft monitor`
//! reads. Every committed transaction sends one message per table, chain,
//! rule or set it added or deleted, then `NEWGEN`; each carries the port id
//! of the socket that sent the transaction, so `rules watch` can tell its
//! own batches from everyone else's. iptables-nft writes nf_tables too, so
//! its `iptables-restore` shows up here as well (family ip/ip6).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::netlink::messages;
use super::SUBSYS_NFTABLES;

/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// `NFT_MSG_NEWGEN`: the end of a transaction; carries no table.
const NFT_MSG_NEWGEN: u8 = 15;
/// The first attribute of every table, chain, rule, set and object
/// message is the table's name (`NFTA_*_TABLE` = 1, `NFTA_TABLE_NAME` = 1).
const NFTA_TABLE: u16 = 1;
/// A burst of notifications: many rules' worth fit before ENOBUFS.
const RCVBUF: libc::c_int = 4 << 20;

/// Which objects matter to the watcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// `table inet lowport` (the nftables backend).
    InetTable,
    /// The `nat` and `raw` tables of families ip and ip6, where iptables-nft
    /// keeps lowport's chains.
    IptablesNft,
}

/// What a drain of the queued notifications found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Someone else changed something of interest.
    pub foreign: bool,
    /// Notifications were lost (ENOBUFS): anything may have changed.
    pub overrun: bool,
    /// Messages read, all kinds.
    pub messages: usize,
}

/// A netlink socket subscribed to nftables notifications.
pub struct Monitor {
    sock: mnl::Socket,
    buf: Vec<u8>,
    interest: Interest,
}

impl Monitor {
    /// Subscribe, in the calling thread's network namespace.
    pub fn open(interest: Interest) -> io::Result<Monitor> {
        let sock = mnl::Socket::open(mnl::Bus::Netfilter)?;
        // Group n is bit n-1 of the bind mask (groups below 32).
        sock.bind(1 << (NFNLGRP_NFTABLES - 1), 0)?;
        // SAFETY: the fd is the open socket owned by `sock`; the value is a
        // c_int and the length passed is its exact size. Best-effort: a
        // smaller buffer only makes an overrun (handled) likelier.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&RCVBUF as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(Monitor {
            sock,
            buf: vec![0; 64 * 1024],
            interest,
        })
    }

    /// Read every queued notification without blocking; messages sent by
    /// port `mine` (the watcher's own batches) are ignored.
    pub fn drain(&mut self, mine: Option<u32>) -> io::Result<Seen> {
        let mut seen = Seen::default();
        loop {
            // SAFETY: the fd is our open socket; pointer and length describe
            // `self.buf`, borrowed mutably for the call.
            let n = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(seen),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        seen.overrun = true;
                        continue;
                    }
                    _ => return Err(err),
                }
            }
            let n = (n as usize).min(self.buf.len());
            for msg in messages(&self.buf[..n]) {
                let Ok(msg) = msg else { break };
                seen.messages += 1;
                let (subsys, ty) = ((msg.ty >> 8) as u8, msg.ty as u8);
                if subsys != SUBSYS_NFTABLES || ty == NFT_MSG_NEWGEN {
                    continue;
                }
                let sender = msg
                    .raw
                    .get(12..16)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_ne_bytes);
                if mine.is_some() && sender == mine {
                    continue;
                }
                let table = msg.nf_attrs().get(NFTA_TABLE).map(|a| a.data);
                let table = table.map(|t| t.strip_suffix(b"\0").unwrap_or(t));
                if self.interests(msg.nf_family(), table) {
                    seen.foreign = true;
                }
            }
        }
    }

    fn interests(&self, family: Option<u8>, table: Option<&[u8]>) -> bool {
        let family = family.map(i32::from);
        match self.interest {
            Interest::InetTable => {
                family == Some(libc::NFPROTO_INET)
                    && table == Some(crate::firewall::TABLE.as_bytes())
            }
            Interest::IptablesNft => {
                matches!(family, Some(libc::NFPROTO_IPV4 | libc::NFPROTO_IPV6))
                    && matches!(table, Some(b"nat" | b"raw"))
            }
        }
    }
}

impl AsRawFd for Monitor {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

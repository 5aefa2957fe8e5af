//! Just enough netlink for lowport: build nfnetlink requests, send them on
//! a `NETLINK_NETFILTER` socket, and read every answer back — acks of a
//! batch, objects of a dump — so that no kernel error goes unseen.
//!
//! Shared by the nftables backend and the conntrack cleanup. Messages are
//! parsed from bytes, never cast, so this module needs no `unsafe` beyond
//! the two socket calls `mnl` does not wrap (`recv` with flags and a
//! receive timeout).

use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// `NLMSG_ERROR`: an ack (error 0) or an error for one request.
pub(crate) const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub(crate) const NLMSG_DONE: u16 = 3;
/// Request flags (`linux/netlink.h`).
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// Attribute type bits that are flags, not the type (`NLA_F_NESTED`, ...).
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG_LEN: usize = 4;

/// How long to wait for the kernel's answer before calling it lost. The
/// kernel answers netfilter requests synchronously, so this only guards
/// against a bug turning into a hang.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer: big enough for a full dump chunk and for an error that
/// echoes the largest message we send (`nft_nlmsg_maxsize`).
const RECV_BUF: usize = 256 * 1024;

/// Round up to netlink's 4-byte alignment.
pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message, borrowed from a receive buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Msg<'a> {
    pub ty: u16,
    pub seq: u32,
    /// The whole message, header included (what libnftnl's parsers take).
    pub raw: &'a [u8],
    /// After the netlink header.
    pub payload: &'a [u8],
}

impl<'a> Msg<'a> {
    /// The attributes after the `nfgenmsg` header of an nfnetlink message.
    pub fn nf_attrs(&self) -> Attrs<'a> {
        Attrs::new(self.payload.get(NFGENMSG_LEN..).unwrap_or(&[]))
    }

    /// The `nfgenmsg` family byte.
    pub fn nf_family(&self) -> Option<u8> {
        self.payload.first().copied()
    }

    /// For `NLMSG_ERROR` and `NLMSG_DONE`: the (negative) errno, 0 for an ack.
    fn error_code(&self) -> io::Result<i32> {
        read_i32(self.payload, 0).ok_or_else(|| malformed("short NLMSG_ERROR/DONE"))
    }
}

/// Raise `flags` on every message of type `ty` in a batch.
pub(crate) fn add_flags(batch: &mut [u8], ty: u16, flags: u16) -> io::Result<()> {
    let mut at_ty = Vec::new();
    for msg in messages(batch) {
        let msg = msg?;
        if msg.ty == ty {
            // Offset of this message in `batch`: both borrow the same buffer.
            at_ty.push(msg.raw.as_ptr() as usize - batch.as_ptr() as usize);
        }
    }
    for at in at_ty {
        set_flags(batch, at, |f| f | flags);
    }
    Ok(())
}

/// Rewrite the flags of the message that starts at `at`.
fn set_flags(batch: &mut [u8], at: usize, f: impl Fn(u16) -> u16) {
    let old = u16::from_ne_bytes([batch[at + 6], batch[at + 7]]);
    batch[at + 6..at + 8].copy_from_slice(&f(old).to_ne_bytes());
}

/// Clear `NLM_F_ACK` on every message of a batch but the last one that
/// asks for it, and return that message's sequence number (`None` when no
/// message asks). Errors are reported for every message whether it asks
/// for an ack or not, so one ack is enough to learn that the batch went
/// through — where an ack per rule costs the kernel a message and lowport
/// a `recv` each, a third of the time of a 1000-mapping apply.
pub(crate) fn ack_last_only(batch: &mut [u8]) -> io::Result<Option<u32>> {
    let mut acked: Vec<(usize, u32)> = Vec::new();
    for msg in messages(batch) {
        let msg = msg?;
        let flags = read_u16(msg.raw, 6).unwrap_or(0);
        if flags & NLM_F_ACK != 0 {
            // Offset of this message in `batch`: both borrow the same buffer.
            let at = msg.raw.as_ptr() as usize - batch.as_ptr() as usize;
            acked.push((at, msg.seq));
        }
    }
    let Some(&(_, last)) = acked.last() else {
        return Ok(None);
    };
    for &(at, _) in &acked[..acked.len() - 1] {
        set_flags(batch, at, |f| f & !NLM_F_ACK);
    }
    Ok(Some(last))
}

/// Split a receive buffer into messages; stops with an error at the first
/// malformed header instead of guessing.
pub(crate) fn messages(buf: &[u8]) -> impl Iterator<Item = io::Result<Msg<'_>>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = read_u32(rest, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(malformed("bad netlink message length")));
        }
        let raw = &rest[..len];
        let msg = Msg {
            ty: read_u16(raw, 4).unwrap_or(0),
            seq: read_u32(raw, 8).unwrap_or(0),
            raw,
            payload: &raw[NLMSG_HDRLEN..],
        };
        rest = rest.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(msg))
    })
}

/// One netlink attribute.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attr<'a> {
    /// Type with the flag bits (`NLA_F_NESTED`) masked off.
    pub ty: u16,
    pub data: &'a [u8],
    /// The attribute as it came, header included: can be sent back as is.
    pub raw: &'a [u8],
}

impl<'a> Attr<'a> {
    /// The attributes nested in this one.
    pub fn nested(&self) -> Attrs<'a> {
        Attrs::new(self.data)
    }

    /// A big-endian u16 payload.
    pub fn be16(&self) -> Option<u16> {
        Some(u16::from_be_bytes(self.data.get(..2)?.try_into().ok()?))
    }

    /// A big-endian u32 payload.
    pub fn be32(&self) -> Option<u32> {
        Some(u32::from_be_bytes(self.data.get(..4)?.try_into().ok()?))
    }

    /// A u8 payload.
    pub fn u8(&self) -> Option<u8> {
        self.data.first().copied()
    }
}

/// Iterator over a run of attributes; ends at the first truncated one.
#[derive(Debug, Clone)]
pub(crate) struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Attrs { rest: buf }
    }

    /// The first attribute of type `ty`.
    pub fn get(mut self, ty: u16) -> Option<Attr<'a>> {
        self.find(|a| a.ty == ty)
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Attr<'a>;

    fn next(&mut self) -> Option<Attr<'a>> {
        let len = read_u16(self.rest, 0)? as usize;
        let ty = read_u16(self.rest, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let raw = &self.rest[..len];
        self.rest = self.rest.get(align4(len)..).unwrap_or(&[]);
        Some(Attr {
            ty,
            data: &raw[4..],
            raw,
        })
    }
}

/// Builder for one nfnetlink request.
pub(crate) struct Request {
    buf: Vec<u8>,
}

impl Request {
    /// Header for subsystem `subsys`, message `msg`, with `flags` (to which
    /// `NLM_F_REQUEST` is added) and the `nfgenmsg` family.
    pub fn new(subsys: u8, msg: u8, flags: u16, seq: u32, family: u8) -> Request {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set in finish()
        buf.extend_from_slice(&(u16::from(subsys) << 8 | u16::from(msg)).to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        buf.extend_from_slice(&[family, libc::NFNETLINK_V0 as u8, 0, 0]);
        Request { buf }
    }

    /// Append an attribute.
    pub fn attr(mut self, ty: u16, data: &[u8]) -> Request {
        let len = 4 + data.len();
        // Attribute lengths are u16; every caller passes short names.
        let len16 = u16::try_from(len).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// Append a NUL-terminated string attribute.
    pub fn attr_str(self, ty: u16, s: &str) -> Request {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(ty, &data)
    }

    /// Append an attribute exactly as the kernel sent it.
    pub fn attr_raw(mut self, raw: &[u8]) -> Request {
        self.buf.extend_from_slice(raw);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    /// The finished message.
    pub fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX);
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A `NETLINK_NETFILTER` socket, one per operation so that no stale answer
/// from an earlier request can be mistaken for a new one.
pub(crate) struct Socket {
    sock: mnl::Socket,
    buf: Vec<u8>,
}

impl Socket {
    /// Open and bind a socket with a receive timeout.
    pub fn open() -> io::Result<Socket> {
        let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: the fd is the open socket owned by `sock`; `tv` is a valid
        // timeval and the length passed is its exact size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket {
            sock,
            buf: vec![0; RECV_BUF],
        })
    }

    /// The port id the kernel bound this socket to: what nf_tables records
    /// as the owner of a table created through it, and what its
    /// notifications carry as their sender.
    pub fn portid(&self) -> u32 {
        self.sock.portid()
    }

    /// Make room for a batch of `len` bytes that up to `answers` messages
    /// may answer (one ack, but an error for each message a bad batch
    /// fails). The batch must fit the send buffer whole (it cannot be
    /// split), and every answer is its own skb in the receive queue (about
    /// 1 KiB of accounting each, as nft reckons), which would otherwise
    /// overflow with ENOBUFS for a few hundred rules. Best-effort, like
    /// nft's own: a send or receive error still reports a failure.
    pub fn fit_buffers(&self, len: usize, answers: usize) {
        const DEFAULT: usize = 200 * 1024;
        for (opt, want) in [
            (libc::SO_SNDBUFFORCE, len.saturating_mul(2)),
            (libc::SO_RCVBUFFORCE, answers.saturating_mul(1024)),
        ] {
            if want <= DEFAULT {
                continue;
            }
            let size = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
            // SAFETY: the fd is our open socket; `size` is a c_int and the
            // length passed is its exact size. The *FORCE options ignore
            // the wmem_max/rmem_max caps (they need CAP_NET_ADMIN, which
            // changing the ruleset needs anyway); failure is harmless.
            unsafe {
                libc::setsockopt(
                    self.sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    /// Send one datagram, all of it.
    pub fn send(&self, data: &[u8]) -> io::Result<()> {
        let sent = self.sock.send(data)?;
        if sent != data.len() {
            return Err(io::Error::other("netlink sendto sent a partial message"));
        }
        Ok(())
    }

    /// Receive one datagram (which may hold many messages). With
    /// `nonblocking`, `Ok(None)` means nothing is queued.
    fn recv(&mut self, nonblocking: bool) -> io::Result<Option<&[u8]>> {
        let flags = libc::MSG_TRUNC | if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: the fd is our open socket; the pointer and length describe
        // `self.buf`, which stays borrowed mutably for the call.
        let n = unsafe {
            libc::recv(
                self.sock.as_raw_fd(),
                self.buf.as_mut_ptr().cast(),
                self.buf.len(),
                flags,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock if nonblocking => Ok(None),
                io::ErrorKind::WouldBlock => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from the kernel over netlink",
                )),
                _ => Err(err),
            };
        }
        let n = n as usize;
        if n > self.buf.len() {
            return Err(io::Error::other(format!(
                "netlink answer of {n} bytes does not fit the {} byte buffer",
                self.buf.len()
            )));
        }
        Ok(Some(&self.buf[..n]))
    }

    /// Wait for the answer to a batch whose messages carry the sequence
    /// numbers `seqs` and in which only the message `last` asks for an ack
    /// (see [`ack_last_only`]). The kernel processes a batch within the
    /// send and queues its answers in order, errors for any message before
    /// the final ack, so the batch succeeded when `last` is acked with no
    /// error before it. The first error is returned (as its errno); after
    /// an error, answers already queued are drained but none are waited
    /// for, since a failed batch may leave `last` unanswered.
    pub fn wait_batch(&mut self, seqs: Range<u32>, last: u32) -> io::Result<()> {
        let mut acked = false;
        let mut first_error: Option<i32> = None;
        while !acked {
            let Some(buf) = self.recv(first_error.is_some())? else {
                break;
            };
            for msg in messages(buf) {
                let msg = msg?;
                if msg.ty != NLMSG_ERROR || !seqs.contains(&msg.seq) {
                    continue;
                }
                acked |= msg.seq == last;
                let code = msg.error_code()?;
                if code < 0 && first_error.is_none() {
                    tracing::debug!(
                        seq = msg.seq,
                        errno = -code,
                        "netlink batch message rejected"
                    );
                    first_error = Some(-code);
                }
            }
        }
        match first_error {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }

    /// Send `request` (sequence number `seq`) and pass every object the
    /// kernel answers with to `each`, until the dump ends (`NLMSG_DONE`) or
    /// the request is acked. An error answer is returned as its errno.
    pub fn transact(
        &mut self,
        request: &[u8],
        seq: u32,
        mut each: impl FnMut(Msg<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        self.send(request)?;
        loop {
            let Some(buf) = self.recv(false)? else {
                continue;
            };
            for msg in messages(buf) {
                let msg = msg?;
                if msg.seq != seq {
                    continue;
                }
                match msg.ty {
                    NLMSG_ERROR | NLMSG_DONE => {
                        let code = msg.error_code()?;
                        return if code < 0 {
                            Err(io::Error::from_raw_os_error(-code))
                        } else {
                            Ok(())
                        };
                    }
                    _ => each(msg)?,
                }
            }
        }
    }
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}"))
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn read_i32(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_and_attributes_round_trip() {
        let req = Request::new(10, 1, NLM_F_ACK, 7, 1)
            .attr_str(1, "lowport")
            .attr(2, &[1, 2, 3])
            .finish();
        assert_eq!(req.len() % 4, 0);
        let msgs: Vec<_> = messages(&req).collect::<io::Result<_>>().unwrap();
        assert_eq!(msgs.len(), 1);
        let m = msgs[0];
        assert_eq!(m.ty, 10 << 8 | 1);
        assert_eq!(m.seq, 7);
        assert_eq!(read_u16(m.raw, 6), Some(NLM_F_ACK | NLM_F_REQUEST));
        assert_eq!(m.nf_family(), Some(1));
        let attrs: Vec<_> = m.nf_attrs().collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].data, b"lowport\0");
        assert_eq!(attrs[1].data, &[1, 2, 3]);
        assert_eq!(attrs[1].raw.len(), 7);
    }

    #[test]
    fn only_the_last_acked_message_keeps_its_ack() {
        let mut batch = Vec::new();
        for (seq, flags) in [
            (1, 0),
            (2, NLM_F_ACK),
            (3, NLM_F_ACK),
            (4, NLM_F_ACK),
            (5, 0),
        ] {
            batch.extend(Request::new(10, 1, flags, seq, 1).attr(1, b"abc").finish());
        }
        assert_eq!(ack_last_only(&mut batch).expect("well formed"), Some(4));
        let acked: Vec<u32> = messages(&batch)
            .map(|m| m.expect("well formed"))
            .filter(|m| read_u16(m.raw, 6).unwrap_or(0) & NLM_F_ACK != 0)
            .map(|m| m.seq)
            .collect();
        assert_eq!(acked, [4]);
        // Everything else is untouched.
        let seqs: Vec<u32> = messages(&batch).map(|m| m.expect("ok").seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);

        let mut none = Request::new(10, 1, 0, 9, 1).finish();
        assert_eq!(ack_last_only(&mut none).expect("well formed"), None);
    }

    #[test]
    fn flags_are_raised_on_messages_of_one_type_only() {
        let mut batch = Vec::new();
        for (seq, msg) in [(1, 0), (2, 3), (3, 0)] {
            batch.extend(Request::new(10, msg, NLM_F_ACK, seq, 1).finish());
        }
        add_flags(&mut batch, 10 << 8, NLM_F_EXCL).expect("well formed");
        let flags: Vec<u16> = messages(&batch)
            .map(|m| read_u16(m.expect("ok").raw, 6).unwrap_or(0))
            .collect();
        let base = NLM_F_REQUEST | NLM_F_ACK;
        assert_eq!(flags, [base | NLM_F_EXCL, base, base | NLM_F_EXCL]);
    }

    #[test]
    fn nested_attributes_mask_the_nested_flag() {
        // An attribute of type 1 with NLA_F_NESTED, holding a be16 of type 3.
        let inner = [6u8, 0, 3, 0, 0x1f, 0x90, 0, 0];
        let mut outer = vec![12u8, 0, 1, 0x80];
        outer.extend_from_slice(&inner);
        let a = Attrs::new(&outer).get(1).unwrap();
        assert_eq!(a.nested().get(3).and_then(|p| p.be16()), Some(8080));
    }

    #[test]
    fn truncated_input_stops_instead_of_panicking() {
        assert_eq!(Attrs::new(&[200, 0, 1, 0, 9]).count(), 0);
        let mut bad = vec![0u8; 20];
        bad[..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(messages(&bad).next().unwrap().is_err());
    }
}

//! Moving datagrams between sockets, for the flows in [`super`]: receive
//! slots that no datagram can overflow, runs of equal datagrams gathered
//! into one GSO send, the sends themselves with their fallbacks when the
//! kernel refuses GSO, and the relay's socket options.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::AtomicU64;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tracing::{debug, info};

use crate::proxy::proxy_protocol::unmap;
use crate::proxy::stats::inc;

/// One receive slot: more than the largest UDP payload and than any GRO
/// batch (the kernel's skb_gro_receive keeps one below 65,536 bytes).
pub(super) const SLOT: usize = 1 << 16;
// The largest UDP payload is 65,527 bytes (IPv6; 65,507 over IPv4).
const _: () = assert!(SLOT > 65_527);

/// A read that filled its whole slot may have been cut (MSG_TRUNC):
/// recvmmsg reports the bytes it copied, and no whole datagram or GRO batch
/// is that long. quinn-udp does not hand on msg_flags, so the length is the
/// check; exact, since one byte more than the largest payload is a slot.
pub(super) fn cut(m: &RecvMeta) -> bool {
    m.len >= SLOT
}

/// A relay socket's options on top of what quinn-udp sets: fragment
/// datagrams larger than the path's MTU instead of dropping them (QUIC
/// forbids fragmentation for its own packets; a relay must deliver what an
/// endpoint sent), and no receive timestamps (a cmsg per read, unused).
pub(super) fn relay_options(sock: &UdpSocket, v6: bool) {
    let set = |level, name, value: libc::c_int| {
        // SAFETY: setsockopt on a socket we own, with a c_int of the right size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(sock),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    set(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 0);
    set(
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_WANT,
    );
    if v6 {
        set(
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_WANT,
        );
        set(libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 0);
    }
}

/// Ask for a receive buffer of `want` bytes, never shrinking a larger one
/// (systemd's ReceiveBuffer=, or SO_RCVBUFFORCE by whoever made the
/// socket). The kernel caps SO_RCVBUF at net.core.rmem_max and reports
/// twice what it took (the other half is its bookkeeping): the bytes it
/// took when that is less than `want`.
pub(super) fn receive_buffer(sock: &UdpSocket, want: usize) -> io::Result<Option<usize>> {
    let s = socket2::SockRef::from(sock);
    if s.recv_buffer_size()? / 2 >= want {
        return Ok(None);
    }
    s.set_recv_buffer_size(want)?;
    let took = s.recv_buffer_size()? / 2;
    Ok((took < want).then_some(took))
}

/// The most payload gathered into one GSO send (the kernel refuses a
/// send whose UDP length would pass 65,535 bytes).
pub(super) const MAX_RUN: usize = 65_000;
/// The most datagrams in one GSO send (the kernel's UDP_MAX_SEGMENTS).
pub(super) const MAX_RUN_DATAGRAMS: usize = 64;

/// Where the run of reads that starts at `start` ends (a read that is not
/// [`cut`]): single datagrams
/// from one sender, to one address, with one ECN mark, all of the first's
/// size but the last, which may be shorter. A recvmmsg batch from a busy
/// client (loopback has no GRO) leaves as one GSO send instead of one
/// sendmsg per datagram; the receiver still gets each datagram on its own.
pub(super) fn run_end(meta: &[RecvMeta], start: usize) -> usize {
    let first = &meta[start];
    if first.len == 0 || first.stride != first.len {
        return start + 1;
    }
    let (mut end, mut total) = (start + 1, first.len);
    while let Some(m) = meta.get(end) {
        if m.addr != first.addr
            || m.dst_ip != first.dst_ip
            || m.ecn != first.ecn
            || m.len == 0
            || m.stride != m.len
            || m.len > first.len
            || total + m.len > MAX_RUN
            || end - start >= MAX_RUN_DATAGRAMS
        {
            break;
        }
        total += m.len;
        end += 1;
        if m.len < first.len {
            break;
        }
    }
    end
}

/// The reads `start..end` of a batch as one read: the slot itself, or the
/// datagrams gathered into `run`, with a meta that says their stride.
pub(super) fn gather<'a>(
    meta: &[RecvMeta],
    slots: &'a [u8],
    run: &'a mut Vec<u8>,
    start: usize,
    end: usize,
) -> (RecvMeta, &'a [u8]) {
    let mut m = meta[start];
    if end == start + 1 {
        return (m, &slots[start * SLOT..start * SLOT + m.len]);
    }
    run.clear();
    for (i, r) in meta.iter().enumerate().take(end).skip(start) {
        run.extend_from_slice(&slots[i * SLOT..i * SLOT + r.len]);
    }
    m.stride = m.len;
    m.len = run.len();
    (m, run.as_slice())
}

/// How many datagrams a read holds: a GRO batch is `len / stride` rounded
/// up; an empty datagram is one.
pub(super) fn datagrams(meta: &RecvMeta) -> u64 {
    if meta.len == 0 || meta.stride == 0 {
        1
    } else {
        meta.len.div_ceil(meta.stride) as u64
    }
}

/// Send `contents` (`stride`-sized datagrams, the last maybe shorter) to
/// `destination`. Returns how many datagrams the kernel refused and
/// whether an ICMP error was reported on the way.
pub(super) fn send(
    state: &UdpSocketState,
    sock: &UdpSocket,
    destination: SocketAddr,
    src_ip: Option<IpAddr>,
    meta: &RecvMeta,
    contents: &[u8],
    gso_fallbacks: &AtomicU64,
) -> (u64, u64) {
    let stride = if meta.stride == 0 {
        contents.len().max(1)
    } else {
        meta.stride
    };
    let mut dropped = 0;
    let mut icmp = 0;
    let mut rest = contents;
    loop {
        // A GSO send holds at most max_gso_segments datagrams; 1 means
        // none (refused before, or by this kernel).
        let per_send = state.max_gso_segments().max(1);
        let take = rest.len().min(stride.saturating_mul(per_send));
        let (chunk, tail) = rest.split_at(take);
        let segment_size = (chunk.len() > stride).then_some(stride);
        let t = Transmit {
            destination,
            ecn: meta.ecn,
            contents: chunk,
            segment_size,
            src_ip,
        };
        let mut tries = 0;
        let sent = loop {
            tries += 1;
            let gso = state.max_gso_segments() > 1;
            let r = state.try_send(sock.into(), &t);
            let mut refused = false;
            if let (Err(e), Some(_)) = (&r, segment_size) {
                if gso && state.max_gso_segments() == 1 {
                    // quinn-udp saw EIO or EINVAL (a device that cannot
                    // segment, checksum offload off): once per socket.
                    inc(gso_fallbacks);
                    refused = true;
                    info!(to = %unmap(destination), "UDP GSO send refused by the kernel ({e}): this socket sends datagram by datagram from now on");
                } else if e.raw_os_error() == Some(libc::EMSGSIZE) {
                    // Segments larger than the way out's MTU (udp_send_skb;
                    // EINVAL before Linux 6.10): sent one by one they are
                    // fragmented, as a relay must. A matter of the
                    // destination, not of the socket: GSO stays on.
                    inc(gso_fallbacks);
                    refused = true;
                    debug!(to = %unmap(destination), "UDP GSO send refused by the kernel ({e}): its {stride}-byte datagrams sent one by one");
                }
            }
            match r {
                Ok(()) => break true,
                // A connected socket reports an earlier ICMP error on the
                // next call, and that call sends nothing: once more.
                Err(e) if is_icmp_error(&e) && tries < 3 => icmp += 1,
                // GSO refused (or turned off for this socket by quinn-udp
                // earlier): send the segments one by one.
                Err(_) if segment_size.is_some() && (refused || state.max_gso_segments() == 1) => {
                    let mut one_by_one = 0;
                    for seg in chunk.chunks(stride) {
                        let t1 = Transmit {
                            segment_size: None,
                            contents: seg,
                            ..t.clone()
                        };
                        if state.try_send(sock.into(), &t1).is_err() {
                            one_by_one += 1;
                        }
                    }
                    dropped += one_by_one;
                    break true;
                }
                Err(e) => {
                    debug!(to = %unmap(destination), "UDP send: {e}; datagram(s) dropped");
                    break false;
                }
            }
        };
        if !sent {
            dropped += if chunk.is_empty() {
                1
            } else {
                chunk.len().div_ceil(stride) as u64
            };
        }
        if tail.is_empty() {
            return (dropped, icmp);
        }
        rest = tail;
    }
}

/// ICMP errors a connected UDP socket reports (port or host unreachable,
/// and what the kernel makes of others).
pub(super) fn is_icmp_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED)
            | Some(libc::EHOSTUNREACH)
            | Some(libc::ENETUNREACH)
            | Some(libc::EPROTO)
    )
}

/// The receive slots as quinn-udp wants them.
pub(super) fn slices(slots: &mut [u8]) -> [IoSliceMut<'_>; BATCH_SIZE] {
    let mut it = slots.chunks_mut(SLOT);
    std::array::from_fn(|_| IoSliceMut::new(it.next().unwrap_or_default()))
}

/// A socket connected to `target` from an ephemeral port. The error says
/// whether the socket itself could not be made (out of descriptors).
pub(super) fn flow_socket(
    target: SocketAddr,
) -> Result<(UdpSocket, UdpSocketState), (bool, io::Error)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(
        Domain::for_address(target),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )
    .map_err(|e| (true, e))?;
    sock.connect(&target.into()).map_err(|e| (false, e))?;
    let sock: UdpSocket = sock.into();
    let state = UdpSocketState::new((&sock).into()).map_err(|e| (false, e))?;
    relay_options(&sock, target.is_ipv6());
    Ok((sock, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest datagram arrives whole in a slot, through the same
    /// recvmmsg as the relay's; a read that filled its slot is taken as cut.
    #[test]
    fn the_largest_datagram_fits_a_slot_and_a_full_slot_is_cut() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let state = UdpSocketState::new((&rx).into()).expect("state");
        let sent: Vec<u8> = (0..65_507u32).map(|i| (i % 251) as u8).collect();
        tx.send_to(&sent, rx.local_addr().expect("addr"))
            .expect("send");
        let mut slots = vec![0u8; SLOT * BATCH_SIZE];
        let mut meta = [RecvMeta::default(); BATCH_SIZE];
        let n = state
            .recv((&rx).into(), &mut slices(&mut slots), &mut meta)
            .expect("recv");
        assert_eq!(n, 1);
        assert_eq!(meta[0].len, sent.len());
        assert!(!cut(&meta[0]));
        assert_eq!(&slots[..sent.len()], &sent[..]);

        let mut m = RecvMeta::default();
        m.len = SLOT;
        assert!(cut(&m), "a full slot");
        m.len = SLOT - 1;
        assert!(!cut(&m));
        // A cut read never joins a run (it is dropped before one starts).
        let mut first = RecvMeta::default();
        (first.len, first.stride) = (1200, 1200);
        let mut full = first;
        (full.len, full.stride) = (SLOT, SLOT);
        assert_eq!(run_end(&[first, full], 0), 1);
    }
}

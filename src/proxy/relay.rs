//! The relay between one client and its backend: two pumps, one per
//! direction, stepped by the event loop ([`super::engine`]) whenever one of
//! the connection's sockets reports readiness. Small exchanges are copied
//! through the loop's one buffer (a read and a write), bulk goes socket →
//! pipe → socket with splice(2), and a copy stands in when no pipe can be
//! had. Each direction picks its path by what its last read brought. This
//! module holds the crate's main `unsafe`.
//!
//! The rules it keeps (summarised in ARCHITECTURE.md, "A relayed
//! connection"):
//! - Sockets are registered edge-triggered, so a socket's readiness flag is
//!   cleared only when *that socket* caused the EAGAIN. Splicing socket →
//!   pipe happens only into an *empty* pipe, so an EAGAIN there is the
//!   socket's (a pipe fills by slots, not bytes: a part-full pipe can refuse
//!   data). Splicing pipe → socket happens only from a *non-empty* pipe, so
//!   an EAGAIN there is the socket's too. A *read* that comes back short
//!   also clears it: TCP returns less than asked only when its receive
//!   queue is empty, and data that arrives later raises a new edge (a pipe
//!   offers no such promise, so a short splice does not).
//! - The pipe is drained completely before the next read and before a FIN
//!   is passed on; a pipe that may hold bytes is closed, never pooled.
//! - A connection holds a pipe only while bytes are in it: waiting for data,
//!   it holds its two sockets and nothing else.
//! - Lengths are the pipe's real capacity or the bytes in it, never
//!   `usize::MAX` (EINVAL on some kernels).
//! - Urgent data (MSG_OOB) is read in band (SO_OOBINLINE, set on every
//!   socket), so the urgent byte travels in its place in the stream as an
//!   ordinary byte; its urgency is not passed on. TCP stops every read at
//!   the urgent mark: splice returns EAGAIN there, or 0 when a FIN is
//!   queued behind it, and a read returns short. So a socket that reported
//!   urgent data (EPOLLPRI) is read with copies until it comes back EAGAIN,
//!   a short read there does not clear readiness, and a splice that returns
//!   0 is an end of stream only if the socket is not at the mark.
//! - A reset or I/O error on either side is passed to the other as a reset
//!   (SO_LINGER 0), never as a clean close; a FIN is passed on as
//!   `shutdown(SHUT_WR)`, and the other direction goes on. The second FIN
//!   is sent by the close that ends the connection.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::pipe::{PipePool, PooledPipe};
use super::stats::Stats;

/// Size of the user-space buffer a direction reads into while it moves
/// small exchanges. A read that fills it marks the direction as bulk and
/// moves it to splice; a splice that brings in less than this moves it back.
/// The event loop owns one such buffer: an idle connection owns none.
pub const COPY_CHUNK: usize = 16 * 1024;

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
        })
    }
}

/// An I/O failure on one side of a connection.
#[derive(Debug, thiserror::Error)]
#[error("{op} {side}: {source}")]
pub struct RelayError {
    pub side: Side,
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

fn err(side: Side, op: &'static str) -> impl FnOnce(io::Error) -> RelayError {
    move |source| RelayError { side, op, source }
}

/// How a relayed connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// Both directions finished with a FIN.
    Closed,
    /// No byte moved for idle_timeout: closed with FINs, or reset when
    /// bytes were still in flight.
    IdleTimeout,
    /// One direction finished and no byte moved for fin_timeout since then:
    /// closed with FINs, or reset when bytes were still in flight.
    FinTimeout,
    /// A reset or I/O error: both sockets must be reset.
    Failed(RelayError),
    /// The proxy is shutting down and shutdown_timeout ran out.
    Shutdown,
}

/// One socket of a connection with what epoll last said about it. Sockets
/// are registered edge-triggered: a flag is set by an event and cleared
/// only by the EAGAIN (or short read) that proves it stale.
#[derive(Debug)]
pub struct End {
    pub sock: TcpStream,
    pub readable: bool,
    pub writable: bool,
    /// The peer's FIN (or an error) was reported. It stays readable for
    /// good: a short read can return the last bytes with the FIN still
    /// queued behind them, and no new edge will announce it.
    pub read_closed: bool,
    /// Urgent data was reported (EPOLLPRI) or a splice stopped at the
    /// urgent mark: read with copies, and only an EAGAIN proves the receive
    /// queue empty.
    pub urgent: bool,
}

impl End {
    pub fn new(sock: TcpStream, readable: bool, writable: bool) -> End {
        End {
            sock,
            readable,
            writable,
            read_closed: false,
            urgent: false,
        }
    }

    /// Record what an event reported.
    pub fn saw(&mut self, readable: bool, writable: bool, read_closed: bool, urgent: bool) {
        self.read_closed |= read_closed;
        self.urgent |= urgent;
        self.readable |= readable || read_closed || urgent;
        self.writable |= writable;
    }

    /// A short read: the receive queue was empty at that moment (unless
    /// the read stopped at the urgent mark). A FIN may still be queued
    /// behind the bytes read, so a reported end of stream keeps the socket
    /// readable.
    fn drained(&mut self) {
        self.readable = self.read_closed || self.urgent;
    }

    /// A read came back EAGAIN: nothing is queued, not even an end of
    /// stream (a reported FIN would have read as 0). Whatever said
    /// otherwise was wrong, and keeping it would read EAGAIN for ever.
    fn empty(&mut self) {
        self.readable = false;
        self.read_closed = false;
        self.urgent = false;
    }
}

/// What one direction needs besides its two sockets.
pub struct Ctx<'a> {
    pub pool: &'a Arc<PipePool>,
    pub stats: &'a Stats,
    /// The event loop's copy buffer, [`COPY_CHUNK`] bytes.
    pub buf: &'a mut [u8],
    /// Set when a byte moved (for idle_timeout).
    pub moved: bool,
}

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToBackend,
    ToClient,
}

impl Direction {
    /// (source side, destination side)
    fn sides(self) -> (Side, Side) {
        match self {
            Direction::ToBackend => (Side::Client, Side::Backend),
            Direction::ToClient => (Side::Backend, Side::Client),
        }
    }

    /// Count `n` bytes moved this way.
    fn count(self, ctx: &mut Ctx<'_>, n: usize) {
        let counter = match self {
            Direction::ToBackend => &ctx.stats.bytes_to_backend,
            Direction::ToClient => &ctx.stats.bytes_to_client,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        ctx.moved = true;
    }
}

/// splice(2) `len` bytes from `fd_in` to `fd_out`, non-blocking.
fn splice(fd_in: RawFd, fd_out: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both fds are open for the duration of the call (borrowed
        // from live sockets and a live pipe); null offsets are required for
        // pipes and sockets; `len` is a real, bounded length. SPLICE_F_MORE
        // is not passed: on a socket it corks the last segment of a burst
        // until more data comes, and the relay never knows which write is
        // the last one.
        let n = unsafe {
            libc::splice(
                fd_in,
                std::ptr::null_mut(),
                fd_out,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            // n >= 0 and at most len, so it fits.
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Errors that mean "this socket/pipe pair cannot splice", not "the peer
/// failed": copy instead (only seen before any byte entered the pipe).
fn splice_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
    )
}

/// Pass a FIN on: no more bytes will go to `dst`. When the other direction
/// has already ended, both receive queues have been read to their end, so
/// the close that follows at once sends this FIN (after any bytes still
/// queued) and the shutdown call is saved.
fn pass_fin(dst: &TcpStream, side: Side, other_done: bool) -> Result<(), RelayError> {
    if other_done {
        return Ok(());
    }
    dst.shutdown(std::net::Shutdown::Write)
        .map_err(err(side, "shut down writing to"))
}

/// What a pump waits for after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Its source to become readable.
    Read,
    /// Its destination to become writable (bytes are held).
    Write,
    /// Nothing: its FIN has been passed on.
    Done,
}

/// One direction's state between wake-ups: a few words, so that an idle
/// connection costs little.
///
/// Each direction picks the cheaper path by what it sees: it starts by
/// copying (a request of a few hundred bytes costs one read and one write,
/// where a splice costs two splices, a pipe from the pool and an EAGAIN
/// splice to learn the socket is drained), and moves to splice once a read
/// fills the whole copy buffer, which is where splice starts to win. A
/// splice that brings in less than the buffer moves it back. The switch
/// happens only between chunks, with the pipe empty and nothing pending,
/// so no byte can overtake another.
#[derive(Debug)]
pub struct Pump {
    dir: Direction,
    /// The last read filled the copy buffer: splice the next chunk.
    bulk: bool,
    /// False once splice itself refused this pair of sockets: copy for good.
    can_splice: bool,
    /// The last splice brought in an ordinary pipe's worth or more: ask
    /// for a bulk-sized pipe next.
    fills_pipe: bool,
    /// The source's end of stream was seen; the FIN goes on once the pipe
    /// is drained.
    eof: bool,
    /// The FIN was passed on: this direction is over.
    pub done: bool,
    /// Bytes `dst` could not take yet (the tail of a copy, or a PROXY
    /// header), written before anything else is read: `(bytes, how many
    /// are written)`.
    pending: Option<(Box<[u8]>, usize)>,
    /// The pipe, only while bytes are in it.
    pipe: Option<PooledPipe>,
}

impl Pump {
    pub fn new(dir: Direction) -> Pump {
        Pump {
            dir,
            bulk: false,
            can_splice: true,
            fills_pipe: false,
            eof: false,
            done: false,
            pending: None,
            pipe: None,
        }
    }

    /// Does this direction hold bytes its destination has not taken yet?
    pub fn holds_bytes(&self) -> bool {
        self.pending.is_some() || self.pipe.as_ref().is_some_and(|p| p.in_pipe > 0)
    }

    /// Bytes to write to the destination before anything is read (the
    /// PROXY header).
    pub fn with_pending(dir: Direction, bytes: Vec<u8>) -> Pump {
        let mut p = Pump::new(dir);
        if !bytes.is_empty() {
            p.pending = Some((bytes.into_boxed_slice(), 0));
        }
        p
    }

    /// Move bytes until the source has nothing more for now
    /// ([`Wait::Read`]), the destination takes nothing more
    /// ([`Wait::Write`]), or the FIN has been passed on ([`Wait::Done`]).
    /// `other_done`: the other direction has already ended.
    pub fn step(
        &mut self,
        src: &mut End,
        dst: &mut End,
        ctx: &mut Ctx<'_>,
        other_done: bool,
    ) -> Result<Wait, RelayError> {
        if self.done {
            return Ok(Wait::Done);
        }
        let (_, dst_side) = self.dir.sides();
        loop {
            // Bytes held from a copy go first.
            if let Some((rest, written)) = &mut self.pending {
                if !dst.writable {
                    return Ok(Wait::Write);
                }
                match (&dst.sock).write(&rest[*written..]) {
                    Ok(0) => {
                        return Err(err(dst_side, "write to")(io::ErrorKind::WriteZero.into()))
                    }
                    Ok(m) => {
                        *written += m;
                        self.dir.count(ctx, m);
                        if *written == rest.len() {
                            self.pending = None;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(err(dst_side, "write to")(e)),
                }
                continue;
            }
            // Then the pipe, drained completely before the next read and
            // before a FIN is passed on. The pipe is non-empty: an EAGAIN
            // here can only be the destination's.
            if let Some(pipe) = &mut self.pipe {
                if pipe.in_pipe > 0 {
                    if !dst.writable {
                        return Ok(Wait::Write);
                    }
                    let (pipe_r, len) = (pipe.pipe().read_fd(), pipe.in_pipe);
                    match splice(pipe_r, dst.sock.as_raw_fd(), len) {
                        Ok(0) => {
                            return Err(err(dst_side, "write to")(io::ErrorKind::WriteZero.into()))
                        }
                        Ok(m) => {
                            pipe.in_pipe -= m;
                            self.dir.count(ctx, m);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable = false,
                        // The pipe still holds bytes: dropping it closes it.
                        Err(e) => return Err(err(dst_side, "write to")(e)),
                    }
                    continue;
                }
                // Empty: back to the pool. Idle, a direction holds no pipe.
                self.pipe = None;
            }
            if self.eof {
                self.done = true;
                pass_fin(&dst.sock, dst_side, other_done)?;
                return Ok(Wait::Done);
            }
            if !src.readable {
                return Ok(Wait::Read);
            }
            if !self.bulk || !self.can_splice || src.urgent {
                self.copy_step(src, dst, ctx)?;
            } else {
                self.splice_in(src, ctx)?;
            }
        }
    }

    /// Read what `src` holds into the loop's buffer and write it straight
    /// on: two syscalls for a small exchange, no pipe, nothing kept. A short
    /// read means the receive queue was empty at that moment, so the
    /// socket's readiness is cleared then: data that arrives later raises a
    /// new edge, and no EAGAIN read is spent finding out. Only the unwritten
    /// tail, if any, is copied to the heap.
    fn copy_step(
        &mut self,
        src: &mut End,
        dst: &mut End,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), RelayError> {
        let (src_side, dst_side) = self.dir.sides();
        let len = ctx.buf.len();
        let n = match (&src.sock).read(ctx.buf) {
            Ok(0) => {
                self.eof = true;
                return Ok(());
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                src.empty();
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(err(src_side, "read from")(e)),
        };
        if n < len {
            src.drained();
        }
        self.bulk = n == len;
        let written = if dst.writable {
            match (&dst.sock).write(&ctx.buf[..n]) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    dst.writable = false;
                    0
                }
                Err(e) => return Err(err(dst_side, "write to")(e)),
            }
        } else {
            0
        };
        // What was written is counted now, the rest as it goes.
        self.dir.count(ctx, written);
        if written < n {
            self.pending = Some((ctx.buf[written..n].into(), 0));
        }
        Ok(())
    }

    /// Splice what `src` holds into an empty pipe from the pool.
    fn splice_in(&mut self, src: &mut End, ctx: &mut Ctx<'_>) -> Result<(), RelayError> {
        let (src_side, _) = self.dir.sides();
        let mut pipe = match ctx.pool.take(self.fills_pipe) {
            Ok(pipe) => pipe,
            Err(e) => {
                // EMFILE/ENFILE: no pipe for now. Copy this chunk; the next
                // full one tries again.
                ctx.stats.splice_fallback(&e);
                self.bulk = false;
                return Ok(());
            }
        };
        // The pipe is empty: an EAGAIN here can only be the socket's.
        let capacity = pipe.pipe().capacity();
        match splice(src.sock.as_raw_fd(), pipe.pipe().write_fd(), capacity) {
            // Nothing entered the pipe: it goes back to the pool as it is
            // dropped. splice stops at the urgent mark even with a FIN
            // queued behind it, and returns 0 there too.
            Ok(0) if at_urgent_mark(&src.sock) => src.urgent = true,
            Ok(0) => self.eof = true,
            Ok(n) => {
                pipe.in_pipe = n;
                self.fills_pipe = n >= ctx.pool.ordinary_size();
                // Small again: the next chunk is copied.
                self.bulk = n >= COPY_CHUNK;
                ctx.moved = true;
                self.pipe = Some(pipe);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => src.empty(),
            Err(e) if splice_unsupported(&e) => {
                // Nothing entered the pipe: a copy loses nothing.
                ctx.stats.splice_fallback(&e);
                self.can_splice = false;
            }
            Err(e) => return Err(err(src_side, "read from")(e)),
        }
        Ok(())
    }
}

/// SIOCATMARK from <asm-generic/sockios.h> (the libc crate lacks it on
/// Linux).
const SIOCATMARK: libc::c_ulong = 0x8905;

/// Is the next byte `s` would read its urgent byte? Only asked when a
/// splice returned 0, so an error counts as no.
fn at_urgent_mark(s: &TcpStream) -> bool {
    let mut at: libc::c_int = 0;
    // SAFETY: SIOCATMARK writes one int through the pointer, which points
    // at a live local; the fd is borrowed from a live socket.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), SIOCATMARK, &mut at) };
    rc == 0 && at != 0
}

/// Does `s` hold received bytes nobody has read yet? A close would lose
/// them (and the kernel answers such a close with a reset anyway).
pub fn has_unread(s: &TcpStream) -> bool {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points at
    // a live local; the fd is borrowed from a live socket.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    rc == 0 && n > 0
}

/// Make the next close of `s` send a reset instead of a FIN.
pub fn arm_reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connected, non-blocking pair of loopback sockets: (ours, peer).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let peer = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (ours, _) = l.accept().expect("accept");
        ours.set_nonblocking(true).expect("nonblocking");
        (ours, peer)
    }

    /// One step of a client-to-backend pump after an event that said the
    /// client is readable (and, with `fin`, that its peer closed):
    /// (what it waits for now, the client's end, whether bytes moved).
    fn one_step(client: TcpStream, backend: TcpStream, fin: bool) -> (Wait, End, bool) {
        let mut src = End::new(client, false, true);
        let mut dst = End::new(backend, false, true);
        src.saw(true, false, fin, false);
        let (pool, stats) = (PipePool::new(4096), Stats::default());
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut ctx = Ctx {
            pool: &pool,
            stats: &stats,
            buf: &mut buf,
            moved: false,
        };
        let mut pump = Pump::new(Direction::ToBackend);
        let wait = pump
            .step(&mut src, &mut dst, &mut ctx, false)
            .expect("step");
        (wait, src, ctx.moved)
    }

    /// The last bytes and the FIN arrive together and are reported by one
    /// event: the read that takes the bytes comes back short, and no new
    /// edge will announce the FIN still queued behind them. The direction
    /// must still see its end and pass it on.
    #[test]
    fn a_fin_behind_the_last_bytes_is_not_lost() {
        let (client, mut client_peer) = pair();
        let (backend, mut backend_peer) = pair();
        client_peer.write_all(b"last words").expect("write");
        client_peer
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        std::thread::sleep(Duration::from_millis(50));

        // What epoll reports for it: EPOLLIN | EPOLLRDHUP.
        let (wait, _, moved) = one_step(client, backend, true);
        assert_eq!(wait, Wait::Done, "the FIN was not seen");
        assert!(moved);
        backend_peer
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut got = Vec::new();
        backend_peer.read_to_end(&mut got).expect("read to the FIN");
        assert_eq!(got, b"last words");
    }

    /// An end of stream reported for a socket whose read then comes back
    /// EAGAIN (a stale event, say) is contradicted by that EAGAIN: the
    /// direction waits for the next event instead of reading EAGAIN for
    /// ever, and no end of stream is passed on.
    #[test]
    fn an_eagain_overrules_a_reported_end_of_stream() {
        let (client, _client_peer) = pair();
        let (backend, _backend_peer) = pair();
        let (tx, rx) = std::sync::mpsc::channel();
        // A spinning step never returns: watch it from here.
        std::thread::spawn(move || {
            let (wait, src, moved) = one_step(client, backend, true);
            let _ = tx.send((wait, src.readable, src.read_closed, moved));
        });
        let (wait, readable, read_closed, moved) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the step kept reading EAGAIN");
        // Wait::Done would mean a FIN was passed on.
        assert_eq!(wait, Wait::Read);
        assert!(!readable && !read_closed && !moved);
    }

    /// Without a FIN, a short read means the queue is empty: the direction
    /// waits for the next event instead of spending a read on EAGAIN.
    #[test]
    fn a_short_read_waits_for_the_next_event() {
        let (client, mut client_peer) = pair();
        let (backend, mut backend_peer) = pair();
        client_peer.write_all(b"hello").expect("write");
        std::thread::sleep(Duration::from_millis(50));
        let (wait, src, moved) = one_step(client, backend, false);
        assert_eq!(wait, Wait::Read);
        assert!(!src.readable);
        assert!(moved);
        let mut got = [0u8; 5];
        backend_peer.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hello");
    }
}

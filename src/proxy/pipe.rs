//! Kernel pipes for splice(2), and a small pool of idle ones.
//!
//! Pipes count against a per-user quota (`fs.pipe-user-pages-soft`, shared
//! with the web server running as the same user), so a connection takes a
//! pipe only while bytes are in flight and gives it back as soon as it is
//! empty. A pipe that may still hold bytes is never returned: it is closed
//! (reusing it would hand one client's bytes to another).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

/// The pipe size asked for with F_SETPIPE_SZ (best effort: over the user's
/// quota the kernel refuses, and the default or even one page is what we get).
pub const WANTED_PIPE_SIZE: usize = 128 * 1024;

/// The size of a bulk pipe: for a direction whose last splice brought in
/// an ordinary pipe's worth or more. Measured on loopback (benches/peers/), 1 MiB pipes cut the
/// proxy's CPU per GB by about 15% against 128 KiB ones and raised one
/// stream's throughput by about 10%: fewer, larger splices.
pub const BULK_PIPE_SIZE: usize = 1024 * 1024;

/// At most this many bulk pipes exist at once (16 MiB of the user's pipe
/// quota, a quarter of the default `fs.pipe-user-pages-soft`); past it,
/// bulk directions use ordinary pipes.
const MAX_BULK: usize = 16;

/// Idle ordinary pipes kept for reuse; more are closed when they come back.
const MAX_IDLE: usize = 64;

/// One non-blocking pipe: read end, write end and its real capacity.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A new non-blocking, close-on-exec pipe, resized to `wanted` bytes if
    /// the kernel allows; the real size is read back.
    pub fn new(wanted: usize) -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe2 writes two fds into the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let wanted = libc::c_int::try_from(wanted).unwrap_or(libc::c_int::MAX);
        // SAFETY: fcntl on an fd we own; failure (EPERM over the quota, EBUSY) is fine.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, wanted) };
        // SAFETY: fcntl on an fd we own.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        let capacity = usize::try_from(size)
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or(4096);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// The read end.
    pub fn read_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// The write end.
    pub fn write_fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// Capacity in bytes as the kernel reports it (slots × page size).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Where [`PipePool::take`] gets its pipe.
enum Get {
    Reuse(Pipe),
    NewSmall,
    NewBulk,
}

/// Idle empty pipes shared by all connections, in two sizes.
#[derive(Debug)]
pub struct PipePool {
    inner: Mutex<Idle>,
    wanted: usize,
    bulk: usize,
}

#[derive(Debug, Default)]
struct Idle {
    small: Vec<Pipe>,
    bulk: Vec<Pipe>,
    /// Bulk pipes in existence, idle or on loan.
    bulk_alive: usize,
}

impl PipePool {
    /// An empty pool whose new pipes ask for `wanted` bytes, and bulk ones
    /// for [`BULK_PIPE_SIZE`].
    pub fn new(wanted: usize) -> Arc<PipePool> {
        Self::with_bulk(wanted, BULK_PIPE_SIZE.max(wanted))
    }

    /// Like [`PipePool::new`], with the bulk size given.
    pub fn with_bulk(wanted: usize, bulk: usize) -> Arc<PipePool> {
        Arc::new(PipePool {
            inner: Mutex::new(Idle::default()),
            wanted,
            bulk,
        })
    }

    /// An empty pipe, reused or new: a bulk one when `bulk` is asked and
    /// fewer than [`MAX_BULK`] exist, else an ordinary one. Fails when no
    /// pipe can be made (EMFILE, ENFILE): the caller then copies through
    /// user space.
    pub fn take(self: &Arc<Self>, bulk: bool) -> io::Result<PooledPipe> {
        let get = match self.inner.lock() {
            Ok(mut idle) => match (bulk, idle.bulk.pop()) {
                (true, Some(p)) => Get::Reuse(p),
                (true, None) if idle.bulk_alive < MAX_BULK => {
                    // Counted now, so two takers cannot both pass the cap.
                    idle.bulk_alive += 1;
                    Get::NewBulk
                }
                (_, maybe_bulk) => {
                    // An ordinary pipe first; an idle bulk one will do.
                    match idle.small.pop() {
                        Some(p) => {
                            if let Some(b) = maybe_bulk {
                                idle.bulk.push(b);
                            }
                            Get::Reuse(p)
                        }
                        None => maybe_bulk.map_or(Get::NewSmall, Get::Reuse),
                    }
                }
            },
            Err(_) => Get::NewSmall,
        };
        let pipe = match get {
            Get::Reuse(p) => p,
            Get::NewSmall => Pipe::new(self.wanted)?,
            Get::NewBulk => match Pipe::new(self.bulk) {
                Ok(p) if self.is_bulk(&p) => p,
                // The kernel may refuse the size (quota): then it is an
                // ordinary pipe and no bulk slot is used.
                other => {
                    self.forget_bulk();
                    other?
                }
            },
        };
        Ok(PooledPipe {
            pipe: Some(pipe),
            pool: Arc::clone(self),
            in_pipe: 0,
        })
    }

    /// The size of an ordinary pipe as asked for (the kernel may give less).
    pub fn ordinary_size(&self) -> usize {
        self.wanted
    }

    /// How many idle pipes are kept now (both sizes).
    pub fn idle(&self) -> usize {
        self.inner
            .lock()
            .map(|i| i.small.len() + i.bulk.len())
            .unwrap_or(0)
    }

    fn is_bulk(&self, p: &Pipe) -> bool {
        p.capacity() > self.wanted
    }

    fn forget_bulk(&self) {
        if let Ok(mut idle) = self.inner.lock() {
            idle.bulk_alive = idle.bulk_alive.saturating_sub(1);
        }
    }

    fn put(&self, pipe: Pipe) {
        let bulk = self.is_bulk(&pipe);
        if let Ok(mut idle) = self.inner.lock() {
            if bulk {
                // At most MAX_BULK exist, so all may wait here.
                idle.bulk.push(pipe);
            } else if idle.small.len() < MAX_IDLE {
                idle.small.push(pipe);
            }
        }
    }

    /// A pipe that will not come back (it may hold bytes): closed here.
    fn close(&self, pipe: Pipe) {
        if self.is_bulk(&pipe) {
            self.forget_bulk();
        }
        drop(pipe);
    }
}

/// A pipe on loan from the pool, with the number of bytes it holds.
/// Dropped empty, it goes back to the pool; otherwise it is closed.
#[derive(Debug)]
pub struct PooledPipe {
    pipe: Option<Pipe>,
    pool: Arc<PipePool>,
    /// Bytes spliced in and not yet spliced out.
    pub in_pipe: usize,
}

impl PooledPipe {
    /// The pipe itself.
    pub fn pipe(&self) -> &Pipe {
        // The Option is only emptied in Drop.
        self.pipe.as_ref().expect("pipe present until drop")
    }
}

impl Drop for PooledPipe {
    fn drop(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            if self.in_pipe == 0 {
                self.pool.put(pipe);
            } else {
                // Its bytes die with it, never reach another client.
                self.pool.close(pipe);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_size_is_read_back() {
        let p = Pipe::new(WANTED_PIPE_SIZE).expect("pipe");
        assert!(p.capacity() >= 4096);
    }

    #[test]
    fn non_empty_pipes_are_not_reused() {
        let pool = PipePool::new(65536);
        let mut a = pool.take(false).expect("pipe");
        a.in_pipe = 10;
        drop(a);
        assert_eq!(pool.idle(), 0);
        let b = pool.take(false).expect("pipe");
        drop(b);
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn bulk_pipes_are_bigger_and_capped() {
        // As root the quota does not apply, so the sizes asked are the sizes had.
        let pool = PipePool::with_bulk(65536, 256 * 1024);
        let small = pool.take(false).expect("pipe");
        assert_eq!(small.pipe().capacity(), 65536);
        let bulk: Vec<PooledPipe> = (0..MAX_BULK + 3)
            .map(|_| pool.take(true).expect("pipe"))
            .collect();
        let big = bulk
            .iter()
            .filter(|p| p.pipe().capacity() == 256 * 1024)
            .count();
        assert_eq!(big, MAX_BULK, "bulk pipes past the cap");
        // One bulk pipe holding bytes is closed, freeing its slot.
        let mut bulk = bulk;
        let full = bulk
            .iter()
            .position(|p| p.pipe().capacity() == 256 * 1024)
            .expect("a bulk pipe");
        bulk[full].in_pipe = 1;
        drop(bulk.remove(full));
        let again = pool.take(true).expect("pipe");
        assert_eq!(again.pipe().capacity(), 256 * 1024);
        // Returned empty, bulk pipes are reused for bulk first.
        drop(bulk);
        drop(again);
        let reused = pool.take(true).expect("pipe");
        assert_eq!(reused.pipe().capacity(), 256 * 1024);
        drop(small);
    }
}

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

/// Idle pipes kept for reuse; more are closed when they come back.
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

/// Idle empty pipes shared by all connections.
#[derive(Debug)]
pub struct PipePool {
    idle: Mutex<Vec<Pipe>>,
    wanted: usize,
}

impl PipePool {
    /// An empty pool whose new pipes ask for `wanted` bytes.
    pub fn new(wanted: usize) -> Arc<PipePool> {
        Arc::new(PipePool {
            idle: Mutex::new(Vec::new()),
            wanted,
        })
    }

    /// An empty pipe, reused or new. Fails when no pipe can be made
    /// (EMFILE, ENFILE): the caller then copies through user space.
    pub fn take(self: &Arc<Self>) -> io::Result<PooledPipe> {
        let reused = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let pipe = match reused {
            Some(p) => p,
            None => Pipe::new(self.wanted)?,
        };
        Ok(PooledPipe {
            pipe: Some(pipe),
            pool: Arc::clone(self),
            in_pipe: 0,
        })
    }

    /// How many idle pipes are kept now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    fn put(&self, pipe: Pipe) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(pipe);
            }
        }
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
            }
            // else: closed here; its bytes die with it, never reach another client.
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
        let mut a = pool.take().expect("pipe");
        a.in_pipe = 10;
        drop(a);
        assert_eq!(pool.idle(), 0);
        let b = pool.take().expect("pipe");
        drop(b);
        assert_eq!(pool.idle(), 1);
    }
}

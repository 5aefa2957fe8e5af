//! lowport's state on the host: the sysctls it changed (as they were
//! before), whether an apply or remove is under way, and the lock that
//! serialises lowport's own applies and removes.
//!
//! The state lives in a directory (`/run/lowport`, cleared at boot as the
//! sysctls are) that must be root's and private: lowport refuses one that
//! someone else owns or can write, never follows a link in it, and trusts
//! no file in it that it did not write itself (owner, mode, link count).
//! Everything below the directory is opened relative to one directory file
//! descriptor, so a path swapped after the check changes nothing.
//!
//! A namespace's ledger is named after the namespace's cookie
//! (`SO_NETNS_COOKIE`), which the kernel never hands out twice while it
//! runs; the namespace's inode number is reused, and a ledger keyed by it
//! would be inherited by an unrelated namespace.
//!
//! Small API for every user of the sysctls (`rules apply`, `remove`, a
//! watcher): [`Ledger::lock`], then [`Ledger::begin`], [`Ledger::turn_on`],
//! [`Ledger::restore`], [`Ledger::finish`]; [`Ledger::peek`] reads without
//! the lock for `check`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, FlockOperation, Mode, OFlags};

use super::plan::Sysctl;
use super::sysctl;

/// Directory of the state; `LOWPORT_STATE_DIR` overrides it.
pub const STATE_DIR: &str = "/run/lowport";
/// Environment variable naming another state directory (tests, a host
/// whose /run is elsewhere).
pub const STATE_DIR_ENV: &str = "LOWPORT_STATE_DIR";
/// The lock file in the state directory.
const LOCK_FILE: &str = "lock";
/// A ledger is a few lines; anything larger was not written by lowport.
const MAX_LEDGER_BYTES: u64 = 4096;

/// The state directory in use: `LOWPORT_STATE_DIR`, or `/run/lowport`.
pub fn state_dir() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(STATE_DIR))
}

/// What lowport was doing when its state was last written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Apply,
    Remove,
}

impl Op {
    fn word(self) -> &'static str {
        match self {
            Op::Apply => "apply",
            Op::Remove => "remove",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rules {}", self.word())
    }
}

/// Why the state could not be used. Each names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot use the state directory {}; make it a directory root can write (or set {STATE_DIR_ENV} to one)", .path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the state directory {} is {why}; lowport keeps its state only in a directory that is root's and that nobody else can write: remove it or set {STATE_DIR_ENV} to another directory", .path.display())]
    NotPrivate { path: PathBuf, why: String },
    #[error("cannot read or write {}", .path.display())]
    File {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is {why}; lowport did not write it and will not trust it: remove it, then check the sysctls {} by hand", .path.display(), Sysctl::ALL.map(|s| s.name()).join(", "))]
    Untrusted { path: PathBuf, why: String },
    #[error(
        "cannot tell which network namespace this is (SO_NETNS_COOKIE needs Linux 5.14 or later)"
    )]
    Cookie(#[source] io::Error),
    #[error("cannot read or change {sysctl}")]
    Sysctl {
        sysctl: Sysctl,
        #[source]
        source: io::Error,
    },
}

/// The cookie of the network namespace this thread is in: a 64-bit number
/// the kernel gives each namespace once and never again until reboot.
pub fn netns_cookie() -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the socket is open for the call's duration; cookie and len
    // point to live locals of the sizes the kernel is told.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The file name of this namespace's ledger (in the state directory).
pub fn ledger_name() -> Result<String, LedgerError> {
    let cookie = netns_cookie().map_err(LedgerError::Cookie)?;
    Ok(format!("sysctl-netns-cookie-{cookie}"))
}

/// The open, checked state directory.
struct StateDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl StateDir {
    /// Open the directory (making it, mode 0700, when `create` and it is
    /// missing) and check it is ours and private. `None`: it does not
    /// exist and `create` is false.
    fn open(path: &Path, create: bool) -> Result<Option<StateDir>, LedgerError> {
        let dir_err = |source| LedgerError::Dir {
            path: path.to_owned(),
            source,
        };
        if create {
            match rfs::mkdir(path, Mode::RWXU) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(dir_err(e.into())),
            }
        }
        // O_NOFOLLOW: a link in place of the directory is refused (ELOOP),
        // not followed to wherever its maker pointed it.
        let fd = match rfs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) if !create => return Ok(None),
            Err(rustix::io::Errno::LOOP) => {
                return Err(LedgerError::NotPrivate {
                    path: path.to_owned(),
                    why: "a symbolic link".to_owned(),
                })
            }
            Err(e) => return Err(dir_err(e.into())),
        };
        let st = rfs::fstat(&fd).map_err(|e| dir_err(e.into()))?;
        let euid = rustix::process::geteuid().as_raw();
        let mode = st.st_mode & 0o7777;
        if st.st_uid != euid {
            return Err(LedgerError::NotPrivate {
                path: path.to_owned(),
                why: format!("owned by uid {}, not by uid {euid}", st.st_uid),
            });
        }
        if mode & 0o022 != 0 {
            return Err(LedgerError::NotPrivate {
                path: path.to_owned(),
                why: format!("writable by others (mode {mode:04o})"),
            });
        }
        if mode & 0o077 != 0 && create {
            // Ours and nobody else can write it (an older lowport made it
            // 0755): close it to readers too.
            rfs::fchmod(&fd, Mode::RWXU).map_err(|e| dir_err(e.into()))?;
        }
        Ok(Some(StateDir {
            path: path.to_owned(),
            fd,
        }))
    }

    fn file_err(&self, name: &str) -> impl Fn(rustix::io::Errno) -> LedgerError {
        let path = self.path.join(name);
        move |e| LedgerError::File {
            path: path.clone(),
            source: e.into(),
        }
    }

    /// Open `name` in the directory for reading, without following a
    /// link, and only if lowport wrote it: a regular file of ours, with one
    /// link, that nobody else can write. `None` when it does not exist.
    fn read_trusted(&self, name: &str) -> Result<Option<String>, LedgerError> {
        let path = self.path.join(name);
        let fd = match rfs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::LOOP) => {
                return Err(LedgerError::Untrusted {
                    path,
                    why: "a symbolic link".to_owned(),
                })
            }
            Err(e) => return Err(self.file_err(name)(e)),
        };
        let st = rfs::fstat(&fd).map_err(self.file_err(name))?;
        let euid = rustix::process::geteuid().as_raw();
        let why = if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            Some("not a regular file".to_owned())
        } else if st.st_uid != euid {
            Some(format!("owned by uid {}", st.st_uid))
        } else if st.st_mode & 0o022 != 0 {
            Some(format!(
                "writable by others (mode {:04o})",
                st.st_mode & 0o7777
            ))
        } else if st.st_nlink != 1 {
            Some(format!("linked from {} places", st.st_nlink))
        } else if st.st_size as u64 > MAX_LEDGER_BYTES {
            Some(format!("{} bytes long", st.st_size))
        } else {
            None
        };
        if let Some(why) = why {
            return Err(LedgerError::Untrusted { path, why });
        }
        let mut text = String::new();
        std::fs::File::from(fd)
            .take(MAX_LEDGER_BYTES)
            .read_to_string(&mut text)
            .map_err(|source| LedgerError::File { path, source })?;
        Ok(Some(text))
    }

    /// Replace `name` with `text`: written to a fresh file (O_EXCL, so
    /// nothing planted is written through), synced, then renamed over.
    fn write(&self, name: &str, text: &str) -> Result<(), LedgerError> {
        let tmp = format!(".{name}.tmp");
        let err = self.file_err(name);
        // A leftover from an interrupted write (or anything else there).
        match rfs::unlinkat(&self.fd, &tmp, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(err(e)),
        }
        let fd = rfs::openat(
            &self.fd,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(&err)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| LedgerError::File {
                path: self.path.join(&tmp),
                source,
            })?;
        rfs::renameat(&self.fd, &tmp, &self.fd, name).map_err(&err)?;
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), LedgerError> {
        match rfs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(self.file_err(name)(e)),
        }
    }

    /// Take the lock: one lowport at a time applies or removes. Opening
    /// the lock file for writing also proves the directory is writable
    /// before anything in the kernel is touched.
    fn lock(&self) -> Result<OwnedFd, LedgerError> {
        let err = self.file_err(LOCK_FILE);
        let fd = rfs::openat(
            &self.fd,
            LOCK_FILE,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => LedgerError::Untrusted {
                path: self.path.join(LOCK_FILE),
                why: "a symbolic link".to_owned(),
            },
            e => err(e),
        })?;
        match rfs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                tracing::info!(
                    dir = %self.path.display(),
                    "another lowport is applying or removing rules; waiting for it"
                );
                rfs::flock(&fd, FlockOperation::LockExclusive).map_err(&err)?;
            }
            Err(e) => return Err(err(e)),
        }
        Ok(fd)
    }
}

/// This namespace's state, as read from its ledger.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Each sysctl lowport changed, with the value it had before.
    pub saved: BTreeMap<Sysctl, u8>,
    /// An apply or remove that started and never finished.
    pub pending: Option<Op>,
}

impl Snapshot {
    fn parse(path: &Path, text: &str) -> Result<Snapshot, LedgerError> {
        let mut snap = Snapshot::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let parsed = line.split_once('=').and_then(|(k, v)| {
                if k == "pending" {
                    snap.pending = Some(match v {
                        "apply" => Op::Apply,
                        "remove" => Op::Remove,
                        _ => return None,
                    });
                    return Some(());
                }
                let s = Sysctl::ALL.into_iter().find(|s| s.name() == k)?;
                let v: u8 = v.parse().ok().filter(|v| *v <= 1)?;
                snap.saved.insert(s, v);
                Some(())
            });
            if parsed.is_none() {
                return Err(LedgerError::Untrusted {
                    path: path.to_owned(),
                    why: format!("not a ledger lowport wrote (line {:?})", line),
                });
            }
        }
        Ok(snap)
    }

    fn render(&self) -> String {
        let mut text: String = self
            .saved
            .iter()
            .map(|(s, v)| format!("{}={v}\n", s.name()))
            .collect();
        if let Some(op) = self.pending {
            text.push_str(&format!("pending={}\n", op.word()));
        }
        text
    }
}

/// This namespace's ledger, held under the state directory's lock (until
/// dropped).
pub struct Ledger {
    dir: StateDir,
    name: String,
    state: Snapshot,
    _lock: OwnedFd,
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.dir.path.join(&self.name))
            .field("state", &self.state)
            .finish()
    }
}

impl Ledger {
    /// Open the state directory `dir` (making it if missing), wait for the
    /// lock, and read this namespace's ledger. Everything that can be
    /// wrong with the directory shows here, before the kernel is touched.
    pub fn lock(dir: &Path) -> Result<Ledger, LedgerError> {
        let name = ledger_name()?;
        let dir = StateDir::open(dir, true)?.ok_or_else(|| LedgerError::Dir {
            path: dir.to_owned(),
            source: io::ErrorKind::NotFound.into(),
        })?;
        let lock = dir.lock()?;
        let state = match dir.read_trusted(&name)? {
            Some(text) => Snapshot::parse(&dir.path.join(&name), &text)?,
            None => Snapshot::default(),
        };
        Ok(Ledger {
            dir,
            name,
            state,
            _lock: lock,
        })
    }

    /// Read this namespace's ledger without the lock and without making
    /// anything: `None` when there is no state directory or no ledger.
    pub fn peek(dir: &Path) -> Result<Option<Snapshot>, LedgerError> {
        let name = ledger_name()?;
        let Some(dir) = StateDir::open(dir, false)? else {
            return Ok(None);
        };
        match dir.read_trusted(&name)? {
            Some(text) => Ok(Some(Snapshot::parse(&dir.path.join(&name), &text)?)),
            None => Ok(None),
        }
    }

    /// The ledger's path, for messages.
    pub fn path(&self) -> PathBuf {
        self.dir.path.join(&self.name)
    }

    /// An apply or remove that started and did not finish (killed, power
    /// lost): what it left must be looked at again.
    pub fn interrupted(&self) -> Option<Op> {
        self.state.pending
    }

    /// The sysctls lowport changed, with their earlier values.
    pub fn saved(&self) -> &BTreeMap<Sysctl, u8> {
        &self.state.saved
    }

    /// Mark `op` as under way, durably, before the kernel is touched.
    pub fn begin(&mut self, op: Op) -> Result<(), LedgerError> {
        self.state.pending = Some(op);
        self.save()
    }

    /// Mark the operation as finished.
    pub fn finish(&mut self) -> Result<(), LedgerError> {
        self.state.pending = None;
        self.save()
    }

    /// Switch `s` on, recording its earlier value first (only the first
    /// one: a re-apply must not record lowport's own 1 as "what it was").
    /// Returns whether it changed.
    pub fn turn_on(&mut self, s: Sysctl) -> Result<bool, LedgerError> {
        let now = read(s)?;
        if now == 1 {
            return Ok(false);
        }
        if let std::collections::btree_map::Entry::Vacant(e) = self.state.saved.entry(s) {
            e.insert(now);
            self.save()?;
        }
        sysctl::write(s, 1).map_err(|source| LedgerError::Sysctl { sysctl: s, source })?;
        Ok(true)
    }

    /// Put `s` back to the value recorded before lowport changed it.
    /// Returns the value written, if one was.
    pub fn restore(&mut self, s: Sysctl) -> Result<Option<u8>, LedgerError> {
        let Some(&old) = self.state.saved.get(&s) else {
            return Ok(None);
        };
        let now = read(s)?;
        if now != old {
            sysctl::write(s, old).map_err(|source| LedgerError::Sysctl { sysctl: s, source })?;
        }
        self.state.saved.remove(&s);
        self.save()?;
        Ok((now != old).then_some(old))
    }

    /// Put back every sysctl lowport changed except those in `keep`.
    /// `route_localnet` goes first: it is the one that is unsafe without
    /// the guard.
    pub fn restore_except(&mut self, keep: &[Sysctl]) -> Result<Vec<(Sysctl, u8)>, LedgerError> {
        let mut changed = Vec::new();
        let all: Vec<Sysctl> = self
            .state
            .saved
            .keys()
            .copied()
            .filter(|s| !keep.contains(s))
            .collect();
        for s in all {
            if let Some(v) = self.restore(s)? {
                changed.push((s, v));
            }
        }
        Ok(changed)
    }

    fn save(&self) -> Result<(), LedgerError> {
        if self.state == Snapshot::default() {
            return self.dir.remove(&self.name);
        }
        self.dir.write(&self.name, &self.state.render())
    }
}

fn read(s: Sysctl) -> Result<u8, LedgerError> {
    sysctl::read(s).map_err(|source| LedgerError::Sysctl { sysctl: s, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_round_trips_and_garbage_is_refused() {
        let mut snap = Snapshot::default();
        snap.saved.insert(Sysctl::RouteLocalnet, 0);
        snap.pending = Some(Op::Apply);
        let p = Path::new("/x");
        assert_eq!(Snapshot::parse(p, &snap.render()).unwrap(), snap);
        for bad in ["net.ipv4.ip_forward=2\n", "hello\n", "pending=maybe\n"] {
            assert!(Snapshot::parse(p, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_cookie_is_stable_within_a_namespace() {
        let a = netns_cookie().expect("SO_NETNS_COOKIE");
        assert_eq!(a, netns_cookie().unwrap());
    }
}

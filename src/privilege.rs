//! Privilege: what the proxy may still do once its listeners are bound.
//!
//! The proxy needs privilege for one thing only, binding ports below 1024.
//! After that it drops every capability (effective, permitted, inheritable,
//! ambient, and the bounding set where it may), switches away from root to
//! `proxy.user` when started as root, and sets `no_new_privs`, so a bug in
//! the relay cannot be turned into anything more than the rights of an
//! ordinary user.
//!
//! Capabilities are per thread in the kernel: [`drop_privileges`] must run
//! before any other thread exists (the proxy calls it before it builds its
//! runtime), so every later thread inherits the empty sets.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::path::Path;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two words.
const CAP_VERSION_3: u32 = 0x2008_0522;
/// `CAP_SETPCAP`: needed to shrink the bounding set.
const CAP_SETPCAP: u32 = 8;

/// Why privileges could not be dropped. The proxy refuses to serve then.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("proxy.user {user:?}: no such user (set proxy.user to an existing unprivileged user)")]
    NoSuchUser { user: String },
    #[error("proxy.user {user:?} is root (uid 0); choose an unprivileged user such as nobody")]
    UserIsRoot { user: String },
    #[error(
        "proxy.user {user:?} has primary group 0 (root); give it a group of its own \
         (usermod -g GROUP {user}) or choose an unprivileged user such as nobody"
    )]
    GroupIsRoot { user: String },
    #[error("cannot look up proxy.user {user:?}")]
    Lookup {
        user: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot {step}")]
    Syscall {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("still privileged after dropping privileges: {0}")]
    StillPrivileged(String),
}

fn syscall_err(step: &'static str) -> PrivilegeError {
    PrivilegeError::Syscall {
        step,
        source: io::Error::last_os_error(),
    }
}

/// The process's identity and capability sets, as `/proc/self/status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivilegeState {
    /// Real, effective, saved uid.
    pub uid: [u32; 3],
    /// Real, effective, saved gid.
    pub gid: [u32; 3],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
}

impl PrivilegeState {
    /// Read the calling process's state from `/proc/self/status`.
    pub fn current() -> io::Result<PrivilegeState> {
        let text = std::fs::read_to_string("/proc/self/status")?;
        Ok(Self::parse(&text))
    }

    /// Parse the text of a `/proc/PID/status` file.
    pub fn parse(text: &str) -> PrivilegeState {
        let mut st = PrivilegeState::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let hex = || u64::from_str_radix(value, 16).unwrap_or(u64::MAX);
            let ids = || {
                let mut out = [u32::MAX; 3];
                for (slot, v) in out.iter_mut().zip(value.split_whitespace()) {
                    *slot = v.parse().unwrap_or(u32::MAX);
                }
                out
            };
            match key {
                "Uid" => st.uid = ids(),
                "Gid" => st.gid = ids(),
                "Groups" => {
                    st.groups = value
                        .split_whitespace()
                        .map(|g| g.parse().unwrap_or(0))
                        .collect()
                }
                "CapInh" => st.cap_inh = hex(),
                "CapPrm" => st.cap_prm = hex(),
                "CapEff" => st.cap_eff = hex(),
                "CapBnd" => st.cap_bnd = hex(),
                "CapAmb" => st.cap_amb = hex(),
                "NoNewPrivs" => st.no_new_privs = value == "1",
                _ => {}
            }
        }
        st
    }

    /// Is any uid root, or any capability set (except bounding) non-empty?
    pub fn is_privileged(&self) -> bool {
        self.uid.contains(&0) || self.cap_eff | self.cap_prm | self.cap_inh | self.cap_amb != 0
    }
}

impl fmt::Display for PrivilegeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uid={} gid={} CapEff={:016x} CapPrm={:016x} CapInh={:016x} CapAmb={:016x} CapBnd={:016x} no_new_privs={}",
            self.uid[1],
            self.gid[1],
            self.cap_eff,
            self.cap_prm,
            self.cap_inh,
            self.cap_amb,
            self.cap_bnd,
            u8::from(self.no_new_privs)
        )
    }
}

/// How the process was privileged when it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartedAs {
    /// Effective uid 0.
    Root,
    /// Not root, but with some capability (a file capability or ambient set).
    Capabilities,
    /// Neither: only ports >= 1024 or socket-activated listeners work.
    Unprivileged,
}

impl StartedAs {
    /// Classify a state read before dropping anything.
    pub fn of(state: &PrivilegeState) -> StartedAs {
        if state.uid[1] == 0 {
            StartedAs::Root
        } else if state.cap_eff | state.cap_prm | state.cap_amb != 0 {
            StartedAs::Capabilities
        } else {
            StartedAs::Unprivileged
        }
    }
}

impl fmt::Display for StartedAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StartedAs::Root => "root",
            StartedAs::Capabilities => "capabilities",
            StartedAs::Unprivileged => "unprivileged",
        })
    }
}

/// What [`drop_privileges`] did, for the start-up log line.
#[derive(Debug, Clone)]
pub struct DropReport {
    pub started_as: StartedAs,
    /// The user switched to, when started as root.
    pub switched_to: Option<String>,
    /// Whether the bounding set could be cleared (needs CAP_SETPCAP).
    pub bounding_cleared: bool,
    /// The state afterwards.
    pub after: PrivilegeState,
}

impl fmt::Display for DropReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "started as {}", self.started_as)?;
        if let Some(user) = &self.switched_to {
            write!(f, ", switched to user {user}")?;
        }
        write!(
            f,
            ", capabilities dropped (bounding set {}): {}",
            if self.bounding_cleared {
                "cleared"
            } else {
                "kept, no CAP_SETPCAP"
            },
            self.after
        )
    }
}

/// Identity to switch to.
struct Account {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

fn lookup_user(user: &str) -> Result<Account, PrivilegeError> {
    let cname = CString::new(user).map_err(|_| PrivilegeError::NoSuchUser {
        user: user.to_owned(),
    })?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain old data; getpwnam_r fills it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: the name is a NUL-terminated
    // string, `pwd` and `result` are live locals and `buf` has `buf.len()` bytes.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(PrivilegeError::Lookup {
            user: user.to_owned(),
            source: io::Error::from_raw_os_error(rc),
        });
    }
    if result.is_null() {
        // A numeric id without a passwd entry is still a valid identity.
        return match user.parse::<u32>() {
            Ok(id) => Ok(Account { uid: id, gid: id }),
            Err(_) => Err(PrivilegeError::NoSuchUser {
                user: user.to_owned(),
            }),
        };
    }
    Ok(Account {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Empty the effective, permitted and inheritable sets of this thread.
fn capset_none() -> Result<(), PrivilegeError> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and, for version 3, two data structs;
    // both are live, correctly laid out (repr(C)) locals.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        return Err(syscall_err("clear capability sets (capset)"));
    }
    Ok(())
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drop the whole bounding set; false when not allowed (no CAP_SETPCAP).
fn clear_bounding_set(state: &PrivilegeState) -> bool {
    if state.cap_eff & (1 << CAP_SETPCAP) == 0 {
        return state.cap_bnd == 0;
    }
    for cap in 0..=last_cap() {
        // SAFETY: PR_CAPBSET_DROP takes a capability number; no pointers.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return false;
        }
    }
    true
}

/// Drop every privilege: see the module documentation. Call it once, after
/// binding and before starting any thread. Started as root, switch to `user`
/// (groups cleared, setgid before setuid). Fails rather than leave the
/// process privileged.
pub fn drop_privileges(user: &str) -> Result<DropReport, PrivilegeError> {
    let before = PrivilegeState::current().map_err(|source| PrivilegeError::Syscall {
        step: "read /proc/self/status",
        source,
    })?;
    let started_as = StartedAs::of(&before);
    // The bounding set needs CAP_SETPCAP, which root still has now.
    let bounding_cleared = clear_bounding_set(&before);

    let mut switched_to = None;
    if started_as == StartedAs::Root {
        let account = lookup_user(user)?;
        if account.uid == 0 {
            return Err(PrivilegeError::UserIsRoot {
                user: user.to_owned(),
            });
        }
        // Group root owns files user root does not need to: /etc/shadow is
        // root:shadow, but many a key, socket or log is group 0.
        if account.gid == 0 {
            return Err(PrivilegeError::GroupIsRoot {
                user: user.to_owned(),
            });
        }
        // SAFETY: setgroups with size 0 reads no memory.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return Err(syscall_err("clear supplementary groups (setgroups)"));
        }
        // Group first: once the uid is not 0 we may no longer change it.
        // SAFETY: plain id arguments, no memory.
        if unsafe { libc::setresgid(account.gid, account.gid, account.gid) } != 0 {
            return Err(syscall_err("switch group (setresgid)"));
        }
        // SAFETY: plain id arguments; without PR_SET_KEEPCAPS the kernel clears
        // the permitted and effective sets as the last uid 0 goes away.
        if unsafe { libc::setresuid(account.uid, account.uid, account.uid) } != 0 {
            return Err(syscall_err("switch user (setresuid)"));
        }
        switched_to = Some(format!("{user} (uid {}, gid {})", account.uid, account.gid));
    }

    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(syscall_err("clear the ambient capability set"));
    }
    capset_none()?;
    // SAFETY: PR_SET_NO_NEW_PRIVS takes an integer flag only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(syscall_err("set no_new_privs"));
    }

    let after = PrivilegeState::current().map_err(|source| PrivilegeError::Syscall {
        step: "read /proc/self/status",
        source,
    })?;
    // SAFETY: setuid(0) only tests whether root could be regained; it must fail.
    let regained = after.uid[1] != 0 && unsafe { libc::setuid(0) } == 0;
    // Switched from root: no group 0 either, also not a supplementary one.
    let root_group = switched_to.is_some() && (after.gid.contains(&0) || !after.groups.is_empty());
    if after.is_privileged() || regained || root_group {
        return Err(PrivilegeError::StillPrivileged(after.to_string()));
    }
    Ok(DropReport {
        started_as,
        switched_to,
        bounding_cleared,
        after,
    })
}

// ---- The capable binary ---------------------------------------------------
//
// With `setcap cap_net_bind_service=+ep` on lowport, any local user who can
// run it starts with the capability. Were that user free to choose the
// mappings (`-m 22:2222`), the binary would hand out every port below 1024:
// ssh's, smtp's, cups'. So when lowport gained privilege from its file, it
// serves only a configuration root controls: no -m, no path from the
// environment, and a file whose every directory and the file itself only
// root can change.

/// Did this process gain privilege when it was executed, from its file (a
/// file capability beyond its ambient set, or set-user/group-ID)? The
/// kernel says so in AT_SECURE: it is what makes the dynamic loader ignore
/// LD_PRELOAD. Root running lowport, and systemd's `AmbientCapabilities=`
/// (chosen by root in a unit file), do not set it.
pub fn gained_at_exec() -> bool {
    // SAFETY: getauxval reads this process's auxiliary vector; no pointers.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Environment variables that name paths; the capable binary refuses them.
pub const PATH_VARIABLES: [&str; 2] = ["LOWPORT_CONFIG", "LOWPORT_STATE_DIR"];

/// How to set up the capable binary, for every refusal.
const SETUP: &str = "put the mappings in a file root owns and only root can change, in \
    directories likewise (not /tmp): install -d -m 0755 /etc/lowport; install -m 0644 \
    -o root -g root lowport.yaml /etc/lowport/ (or run lowport as root, or under systemd \
    with AmbientCapabilities=)";

/// The capable binary was asked to serve something root does not control.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what}: lowport has privilege from its file (setcap), so it serves only \
     configuration root controls; {SETUP}"
)]
pub struct NotRootControlled {
    what: String,
}

/// Refuse what the command line and environment may not choose when
/// lowport gained privilege from its file: `-m` mappings and paths from
/// the environment.
pub fn refuse_user_choices(
    map_given: bool,
    env: impl Fn(&str) -> bool,
) -> Result<(), NotRootControlled> {
    if map_given {
        return Err(NotRootControlled {
            what: "-m is not accepted".to_owned(),
        });
    }
    if let Some(var) = PATH_VARIABLES.into_iter().find(|v| env(v)) {
        return Err(NotRootControlled {
            what: format!("{var} is set (unset it; -c FILE names another file)"),
        });
    }
    Ok(())
}

/// Read a configuration file that root controls, or fail saying what is
/// wrong and how to set it up. The path is resolved once (symlinks that
/// root placed are followed), then every directory on the resolved path is
/// opened without following a link and checked by its open descriptor, as
/// is the file: owned by root, writable by no group or other user. Once
/// each directory is root's alone, no one else can swap what the path
/// names between the checks and the read.
pub fn read_root_controlled(path: &Path) -> io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let real = std::fs::canonicalize(path)?;
    let mut dirs: Vec<&Path> = real.ancestors().skip(1).collect();
    dirs.reverse();
    for dir in dirs {
        let d = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| refusal(dir, &format!("cannot open it ({e})")))?;
        root_only(dir, &d.metadata()?)?;
    }
    // O_NONBLOCK: a FIFO put there must not hang the start.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&real)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refusal(&real, "is not a regular file"));
    }
    root_only(&real, &meta)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Owned by root, and no group or other write permission (a sticky,
/// world-writable directory such as /tmp is not root's alone either).
fn root_only(path: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != 0 {
        return Err(refusal(
            path,
            &format!("is owned by uid {}, not by root", meta.uid()),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refusal(
            path,
            &format!(
                "is writable by its group or by everyone (mode {:04o})",
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

fn refusal(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        NotRootControlled {
            what: format!("{} {why}", path.display()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks on the file and each directory: root's and root-only
    /// (these tests run as root; uid is what `chown` can change).
    #[test]
    fn only_files_root_controls_are_read() {
        use std::os::unix::fs::{chown, PermissionsExt};
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: needs root to chown");
            return;
        }
        let base = std::env::temp_dir().join(format!("lp-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).expect("mkdir");
        let cleanup = Cleanup(base.clone());
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
        };
        // A directory everyone may write to (as /tmp) is in the way.
        mode(&base, 0o1777);
        let file = base.join("lowport.yaml");
        std::fs::write(&file, "mappings: []\n").expect("write");
        mode(&file, 0o644);
        let err = read_root_controlled(&file)
            .expect_err("under /tmp")
            .to_string();
        assert!(
            err.contains("writable by its group or by everyone"),
            "{err}"
        );
        assert!(err.contains("install -d -m 0755 /etc/lowport"), "{err}");
        // Each check on its own, past the parent: the file's owner and mode.
        chown(&file, Some(65534), None).expect("chown");
        let meta = std::fs::metadata(&file).expect("stat");
        let err = root_only(&file, &meta).expect_err("nobody's").to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
        chown(&file, Some(0), None).expect("chown");
        mode(&file, 0o664);
        let err = root_only(&file, &std::fs::metadata(&file).expect("stat"))
            .expect_err("group-writable")
            .to_string();
        assert!(err.contains("mode 0664"), "{err}");
        mode(&file, 0o644);
        assert!(root_only(&file, &std::fs::metadata(&file).expect("stat")).is_ok());
        drop(cleanup);
    }

    /// Removes a directory on drop.
    struct Cleanup(std::path::PathBuf);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_capable_binary_takes_no_mappings_and_no_paths_from_users() {
        let err = refuse_user_choices(true, |_| false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("-m is not accepted"), "{err}");
        let err = refuse_user_choices(false, |v| v == "LOWPORT_CONFIG")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("LOWPORT_CONFIG is set"), "{err}");
        assert!(refuse_user_choices(false, |v| v == "RUST_LOG").is_ok());
    }

    #[test]
    fn parses_proc_status() {
        let text = "Name:\tlowport\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n\
                    CapInh:\t0000000000000000\nCapPrm:\t0000000000000400\nCapEff:\t0000000000000400\n\
                    CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        let st = PrivilegeState::parse(text);
        assert_eq!(st.uid, [65534; 3]);
        assert!(st.groups.is_empty());
        let st2 = PrivilegeState::parse("Groups:\t0 27 \n");
        assert_eq!(st2.groups, [0, 27]);
        assert_eq!(st.cap_eff, 0x400);
        assert!(st.no_new_privs);
        assert!(st.is_privileged());
        assert_eq!(StartedAs::of(&st), StartedAs::Capabilities);
    }

    #[test]
    fn unprivileged_state_is_not_privileged() {
        let st = PrivilegeState {
            uid: [1000; 3],
            gid: [1000; 3],
            cap_bnd: u64::MAX,
            ..Default::default()
        };
        assert!(!st.is_privileged());
        assert_eq!(StartedAs::of(&st), StartedAs::Unprivileged);
    }
}

//! Reading the configuration file: size and nesting limits, and whom root
//! trusts to have written it (owner, group, mode, every directory on the way).

use super::*;

/// Why the configuration file could not be read.
pub enum ReadError {
    Io(std::io::Error),
    Unsafe { path: PathBuf, why: String },
}

impl From<std::io::Error> for ReadError {
    fn from(e: std::io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Read the config file. As root, only a file (and directories above it)
/// that nobody but root or the invoking user can change: what it says
/// becomes root's rules, as sshd and sudo judge their own files.
pub(super) fn read_file(path: &Path) -> Result<String, ReadError> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    if rustix::process::geteuid().is_root() {
        let meta = file.metadata()?;
        if let Some(why) = untrusted(&meta, false) {
            return Err(ReadError::Unsafe {
                path: path.to_owned(),
                why,
            });
        }
        let real = std::fs::canonicalize(path)?;
        for dir in real.ancestors().skip(1) {
            let meta = std::fs::metadata(dir)?;
            if let Some(why) = untrusted(&meta, true) {
                return Err(ReadError::Unsafe {
                    path: path.to_owned(),
                    why: format!("in {}, which is {why}", dir.display()),
                });
            }
        }
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    Ok(text)
}

pub(super) fn too_large() -> ReadError {
    ReadError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("the file is larger than {MAX_FILE_BYTES} bytes, the most lowport reads"),
    ))
}

/// Why a file or directory someone else could change is not to be
/// trusted by root (see [`untrusted_owner`]), from its metadata.
pub(super) fn untrusted(meta: &std::fs::Metadata, is_dir: bool) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let invoking = rustix::process::getuid().as_raw();
    let sudo_uid = std::env::var("SUDO_UID").ok().and_then(|u| u.parse().ok());
    untrusted_owner(
        Owner {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode(),
            is_dir,
        },
        invoking,
        sudo_uid,
    )
}

/// Who owns a file or directory and who may write it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Owner {
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// `st_mode`; only the permission bits are read.
    pub(super) mode: u32,
    pub(super) is_dir: bool,
}

/// Why a file or directory is not to be trusted by root: owned by a user
/// other than root or the invoking one (`invoking`, or `sudo_uid` when
/// run through sudo), or writable by others (a group other than root's).
/// A directory that is world-writable but sticky (/tmp) keeps others from
/// replacing a file they do not own, and is accepted.
pub(super) fn untrusted_owner(o: Owner, invoking: u32, sudo_uid: Option<u32>) -> Option<String> {
    let mode = o.mode & 0o7777;
    let uid = o.uid;
    if uid != 0 && uid != invoking && Some(uid) != sudo_uid {
        return Some(format!("owned by uid {uid} (mode {mode:04o})"));
    }
    let sticky = o.is_dir && mode & 0o1000 != 0;
    if mode & 0o002 != 0 && !sticky {
        return Some(format!("writable by everyone (mode {mode:04o})"));
    }
    if mode & 0o020 != 0 && o.gid != 0 && !sticky {
        return Some(format!("writable by group {} (mode {mode:04o})", o.gid));
    }
    None
}

/// The line where `[` `{` nesting first goes deeper than `limit` (outside
/// quotes and comments), if it does. Brackets inside a plain scalar
/// (`a[b`) count too: an overestimate, harmless at a limit no config
/// comes near.
pub(super) fn flow_nesting_beyond(text: &str, limit: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (n, line) in text.lines().enumerate() {
        let mut chars = line.chars().peekable();
        let mut prev = ' ';
        while let Some(c) = chars.next() {
            match quote {
                Some('"') if c == '\\' => {
                    chars.next();
                }
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None => match c {
                    '#' if prev == ' ' || prev == '\t' => break,
                    '"' | '\'' if !prev.is_alphanumeric() => quote = Some(c),
                    '[' | '{' => {
                        depth += 1;
                        if depth > limit {
                            return Some(n + 1);
                        }
                    }
                    ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                },
            }
            prev = c;
        }
    }
    None
}

//! The kernel settings lowport switches on for its rules, and a ledger of
//! what they were before, so `rules remove` puts them back.
//!
//! The ledger is a small file per network namespace (keyed by the
//! namespace's inode) under `/run/lowport`: it must survive `nft flush
//! ruleset`, which wipes lowport's table, and it must not leak between
//! namespaces, whose sysctls are separate. `/run` is cleared at boot, as
//! the sysctls are.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::plan::Sysctl;

/// Directory of the ledgers; `LOWPORT_STATE_DIR` overrides it.
const STATE_DIR: &str = "/run/lowport";

/// Read a sysctl's current value (0 or 1 for the ones lowport uses).
pub fn read(s: Sysctl) -> io::Result<u8> {
    let text = std::fs::read_to_string(s.path())?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{s} = {text:?}")))
}

fn write(s: Sysctl, value: u8) -> io::Result<()> {
    std::fs::write(s.path(), format!("{value}\n"))
}

/// The values lowport changed, as they were before it changed them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    path: PathBuf,
    saved: BTreeMap<Sysctl, u8>,
}

impl Ledger {
    /// The ledger of the network namespace this process is in.
    pub fn open() -> io::Result<Ledger> {
        let ino = std::fs::metadata("/proc/self/ns/net")?.ino();
        let dir = std::env::var_os("LOWPORT_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(STATE_DIR));
        let path = dir.join(format!("sysctl-netns-{ino}"));
        let mut saved = BTreeMap::new();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines() {
                    let parsed = line.split_once('=').and_then(|(k, v)| {
                        let s = Sysctl::ALL.into_iter().find(|s| s.name() == k)?;
                        Some((s, v.trim().parse().ok()?))
                    });
                    if let Some((s, v)) = parsed {
                        saved.insert(s, v);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Ledger { path, saved })
    }

    /// Make sure `needed` are on and nothing else lowport turned on stays
    /// on. Returns the sysctls actually changed, with their new values.
    pub fn converge(&mut self, needed: &[Sysctl]) -> io::Result<Vec<(Sysctl, u8)>> {
        let mut changed = Vec::new();
        for &s in needed {
            let now = read(s)?;
            if now != 1 {
                // Record only the first original value: a re-apply must not
                // record lowport's own 1 as "what it was".
                self.saved.entry(s).or_insert(now);
                self.save()?;
                write(s, 1)?;
                changed.push((s, 1));
            }
        }
        let stale: Vec<Sysctl> = self
            .saved
            .keys()
            .copied()
            .filter(|s| !needed.contains(s))
            .collect();
        for s in stale {
            changed.extend(self.restore_one(s)?);
        }
        Ok(changed)
    }

    /// Put back everything lowport changed.
    pub fn restore_all(&mut self) -> io::Result<Vec<(Sysctl, u8)>> {
        let mut changed = Vec::new();
        let all: Vec<Sysctl> = self.saved.keys().copied().collect();
        for s in all {
            changed.extend(self.restore_one(s)?);
        }
        Ok(changed)
    }

    fn restore_one(&mut self, s: Sysctl) -> io::Result<Option<(Sysctl, u8)>> {
        let Some(&old) = self.saved.get(&s) else {
            return Ok(None);
        };
        let now = read(s)?;
        if now != old {
            write(s, old)?;
        }
        self.saved.remove(&s);
        self.save()?;
        Ok((now != old).then_some((s, old)))
    }

    fn save(&self) -> io::Result<()> {
        if self.saved.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text: String = self
            .saved
            .iter()
            .map(|(s, v)| format!("{}={v}\n", s.name()))
            .collect();
        // Write then rename: a crash never leaves a half-written ledger.
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }
}

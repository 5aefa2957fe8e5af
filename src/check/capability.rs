//! Capability and privilege for proxy mode: may anyone bind the listen
//! ports, does the binary carry cap_net_bind_service (and would the
//! kernel honour it: nosuid mounts, no_new_privs), which lowport proxies
//! listen.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::listeners::Socket;
use super::report::Findings;
use crate::config::Config;

/// May any user bind the listen ports (`net.ipv4.ip_unprivileged_port_start`)?
/// Then nothing is needed at all.
pub(super) fn check_unprivileged_ports(f: &mut Findings, config: &Config) -> bool {
    let port_start = read_u32("/proc/sys/net/ipv4/ip_unprivileged_port_start");
    let min_port = config
        .mappings
        .iter()
        .map(|m| u32::from(m.listen.port.get()))
        .min()
        .unwrap_or(0);
    let unprivileged_ok = port_start.is_some_and(|p| p <= min_port);
    match port_start {
        Some(p) if unprivileged_ok => f.ok(
            "proxy",
            format!("net.ipv4.ip_unprivileged_port_start={p} ≤ {min_port}: any user may bind the listen ports; no capability, no rules needed — the web server could listen there itself"),
        ),
        Some(p) => f.ok(
            "proxy",
            format!("net.ipv4.ip_unprivileged_port_start={p} > {min_port}: binding the listen ports needs cap_net_bind_service"),
        ),
        None => f.warn("proxy", "cannot read net.ipv4.ip_unprivileged_port_start".into(), None),
    }
    unprivileged_ok
}

pub(super) fn read_u32(path: &str) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The lowport proxies listening on mapped ports.
pub(super) fn check_proxies(f: &mut Findings, proxies: &[&Socket]) {
    for s in proxies {
        f.ok(
            "proxy",
            format!(
                "lowport proxy listens on {} {} ({})",
                s.l4,
                s.addr,
                s.owner()
            ),
        );
    }
}

/// Unless any user may bind the listen ports: would a `lowport proxy`
/// started from this binary, the way this one was, get the capability?
/// True when the binary carries it (or none is needed).
pub(super) fn check_privileges(f: &mut Findings, unprivileged_ok: bool) -> bool {
    let lowport_bin = std::env::current_exe().ok();
    let cap_ok = match &lowport_bin {
        Some(bin) if !unprivileged_ok => check_capability(f, bin),
        _ => true,
    };
    if let Some(bin) = &lowport_bin {
        if !unprivileged_ok {
            check_nosuid(f, bin);
        }
    }
    check_no_new_privs(f, unprivileged_ok);
    cap_ok
}

/// `CAP_NET_BIND_SERVICE`, bit 10 of the capability sets.
pub(super) const CAP_NET_BIND_SERVICE: u32 = 10;

/// Read the file capability of `bin`; true when it has
/// cap_net_bind_service in its permitted and effective sets.
pub(super) fn check_capability(f: &mut Findings, bin: &Path) -> bool {
    let fix = format!("sudo setcap cap_net_bind_service=+ep {}", bin.display());
    match file_caps(bin) {
        Ok(Some(caps)) if caps.permitted & (1 << CAP_NET_BIND_SERVICE) != 0 && caps.effective => {
            f.ok(
                "proxy",
                format!("{} carries cap_net_bind_service=ep", bin.display()),
            );
            true
        }
        Ok(Some(_)) => {
            f.warn(
                "proxy",
                format!(
                    "{} has file capabilities, but not cap_net_bind_service=ep",
                    bin.display()
                ),
                Some(fix),
            );
            false
        }
        Ok(None) => {
            f.warn("proxy", format!("{} carries no file capability; `lowport proxy` as a normal user cannot bind the listen ports", bin.display()), Some(format!("{fix}  (or start it from systemd with AmbientCapabilities=CAP_NET_BIND_SERVICE, or by socket activation)")));
            false
        }
        Err(e) => {
            f.warn(
                "proxy",
                format!("cannot read the file capability of {}: {e}", bin.display()),
                None,
            );
            false
        }
    }
}

/// The parts of `struct vfs_cap_data` that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileCaps {
    pub(super) permitted: u64,
    pub(super) effective: bool,
}

/// `security.capability` of `path`, decoded; `None` when it has none.
pub(super) fn file_caps(path: &Path) -> std::io::Result<Option<FileCaps>> {
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has a NUL byte")
    })?;
    let name = c"security.capability";
    let mut buf = [0u8; 64];
    // SAFETY: both strings are NUL-terminated and live for the call; the
    // buffer is writable for its full length, which is what we pass.
    let n = unsafe {
        libc::getxattr(
            cpath.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
            _ => Err(e),
        };
    }
    let data = buf
        .get(..usize::try_from(n).unwrap_or(0))
        .unwrap_or_default();
    Ok(decode_vfs_caps(data))
}

/// `magic_etc` (revision | effective flag), then (permitted, inheritable)
/// pairs of 32-bit words, low word first; v3 adds a root uid.
pub(super) fn decode_vfs_caps(data: &[u8]) -> Option<FileCaps> {
    let word = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            data.get(i * 4..i * 4 + 4)?.try_into().ok()?,
        ))
    };
    let magic = word(0)?;
    let effective = magic & 0x1 != 0;
    let revision = magic & 0xFF00_0000;
    let lo = u64::from(word(1)?);
    let hi = match revision {
        0x0100_0000 => 0,
        _ => u64::from(word(3).unwrap_or(0)),
    };
    Some(FileCaps {
        permitted: lo | hi << 32,
        effective,
    })
}

pub(super) fn check_nosuid(f: &mut Findings, bin: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut best: Option<(usize, String, bool)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(mp), Some(opts)) = (fields.get(4), fields.get(5)) else {
            continue;
        };
        let mp = mp.replace("\\040", " ");
        if bin.starts_with(&mp) && best.as_ref().is_none_or(|(len, _, _)| mp.len() >= *len) {
            best = Some((mp.len(), mp.clone(), opts.split(',').any(|o| o == "nosuid")));
        }
    }
    if let Some((_, mp, true)) = best {
        f.warn(
            "proxy",
            format!("{} is on {mp}, mounted nosuid: the kernel ignores its file capability", bin.display()),
            Some(format!("install lowport on a filesystem without nosuid (e.g. /usr/local/bin), or remount {mp} without nosuid")),
        );
    }
}

pub(super) fn check_no_new_privs(f: &mut Findings, unprivileged_ok: bool) {
    if unprivileged_ok {
        return;
    }
    let nnp = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NoNewPrivs:").map(|v| v.trim() == "1"))
        })
        .unwrap_or(false);
    if nnp {
        f.warn(
            "proxy",
            "this process runs with no_new_privs: a lowport started the same way gets no file capability".into(),
            Some("under systemd, use AmbientCapabilities=CAP_NET_BIND_SERVICE (works with NoNewPrivileges=yes) instead of a file capability".into()),
        );
    }
    for dir in [
        "/etc/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("lowport") && name.ends_with(".service")) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let nnp = text.lines().any(|l| {
                let l = l.trim().replace(' ', "");
                l == "NoNewPrivileges=yes" || l == "NoNewPrivileges=true"
            });
            let ambient =
                text.contains("AmbientCapabilities=") && text.contains("CAP_NET_BIND_SERVICE");
            let path = PathBuf::from(dir).join(&name);
            if nnp && !ambient && text.contains("proxy") {
                f.warn(
                    "proxy",
                    format!("{} sets NoNewPrivileges=yes, which makes the kernel ignore lowport's file capability", path.display()),
                    Some("add AmbientCapabilities=CAP_NET_BIND_SERVICE to the unit".into()),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfs_caps_decode() {
        // setcap cap_net_bind_service=+ep: revision 2, effective, permitted bit 10.
        let mut v2 = Vec::new();
        for w in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
            v2.extend_from_slice(&w.to_le_bytes());
        }
        let c = decode_vfs_caps(&v2).unwrap();
        assert!(c.effective && c.permitted & (1 << CAP_NET_BIND_SERVICE) != 0);
        // cap_net_bind_service=+p: permitted only, not effective (the
        // effective flag is bit 0 of the magic word alone).
        let mut p_only = Vec::new();
        for w in [0x0200_0000u32, 1 << 10, 0, 0, 0] {
            p_only.extend_from_slice(&w.to_le_bytes());
        }
        let c = decode_vfs_caps(&p_only).unwrap();
        assert!(!c.effective, "+p counted as effective");
        assert_eq!(c.permitted, 1 << CAP_NET_BIND_SERVICE);
        // Revision 2 keeps the high 32 capabilities in word 3; revision 1
        // has none.
        let mut high = Vec::new();
        for w in [0x0200_0001u32, 0, 0, 1, 0] {
            high.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(decode_vfs_caps(&high).unwrap().permitted, 1 << 32);
        let mut v1 = Vec::new();
        for w in [0x0100_0001u32, 1 << 10, 0, 1, 0] {
            v1.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(decode_vfs_caps(&v1).unwrap().permitted, 1 << 10);
        assert!(decode_vfs_caps(&[1, 2, 3]).is_none(), "a short attribute");
    }
}

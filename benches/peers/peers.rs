//! The rows: each relay, how it is configured and started, and the kernel
//! DNAT row's rules (in place only while that row is measured).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::harness::{have, lowport_bin, taskset_cpu1, write_tmp};
use crate::load::{BACKEND_PORT, REQ};

pub(crate) struct Peer {
    pub(crate) name: &'static str,
    /// Where clients connect.
    pub(crate) port: u16,
    /// Processes to measure (the proxy's main pid); empty for kernel rows.
    pub(crate) child: Option<Child>,
    /// Why the row is empty, if it is.
    pub(crate) skipped: Option<String>,
    /// Kernel rows have no process whose CPU can be read.
    pub(crate) kernel: bool,
    pub(crate) _tmp: Option<PathBuf>,
}

/// Where the kernel DNAT row listens.
pub(crate) const DNAT_PORT: u16 = 10080;

/// Install (or remove) lowport's rules for the kernel DNAT row. They are in
/// place only while that row is measured: NAT rules make every packet in
/// the namespace go through conntrack, which the relays' rows would
/// otherwise pay for too, and the conntrack entries of the DNAT row's short
/// connections would weigh on whichever row came next.
pub(crate) fn dnat_rules(on: bool) -> Result<(), String> {
    let mut cmd = Command::new(lowport_bin());
    if on {
        cmd.args([
            "-m",
            &format!("{DNAT_PORT}:{BACKEND_PORT}"),
            "rules",
            "apply",
        ]);
    } else {
        cmd.args(["rules", "remove"]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "lowport rules {} failed: {}",
            if on { "apply" } else { "remove" },
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

impl Peer {
    /// The kernel DNAT row, the only one measured with lowport's rules in
    /// place. "direct" is a kernel row too (no relay process), but it is
    /// the baseline every ratio divides by: with the rules in place, its
    /// packets would go through conntrack as well.
    pub(crate) fn has_rules(&self) -> bool {
        self.kernel && self.port == DNAT_PORT
    }
}

/// Runs `f` with the row's rules in place (the kernel DNAT row only).
pub(crate) fn with_rules<T>(p: &Peer, f: impl FnOnce() -> T) -> T {
    if p.has_rules() {
        if let Err(e) = dnat_rules(true) {
            panic!("{e}");
        }
    }
    let out = f();
    if p.has_rules() {
        if let Err(e) = dnat_rules(false) {
            panic!("{e}");
        }
    }
    out
}

pub(crate) fn start_peers() -> Vec<Peer> {
    let b = format!("127.0.0.1:{BACKEND_PORT}");
    let mut peers = Vec::new();
    let mut add =
        |name: &'static str,
         port: u16,
         start: &dyn Fn(u16) -> Result<(Option<Child>, Option<PathBuf>), String>| {
            let (child, tmp, skipped) = match start(port) {
                Ok((c, t)) => (c, t, None),
                Err(why) => (None, None, Some(why)),
            };
            peers.push(Peer {
                name,
                port,
                kernel: child.is_none() && skipped.is_none(),
                child,
                skipped,
                _tmp: tmp,
            });
        };
    add("direct", BACKEND_PORT, &|_| Ok((None, None)));
    // Its rules are installed only while its row is measured (dnat_rules).
    add("kernel DNAT (lowport rules)", DNAT_PORT, &|_| {
        Ok((None, None))
    });
    add("lowport proxy", 10081, &|port| {
        // Every client of the benchmark is 127.0.0.1: the per-client limit
        // (512 by default) would reset most of its 3000 idle connections.
        let cfg = write_tmp(
            "lowport.yaml",
            "proxy:\n  max_connections_per_client: 4096\n",
        );
        let c = taskset_cpu1(lowport_bin().to_str().unwrap_or("lowport"), port)
            .args(["-q", "-c"])
            .arg(&cfg)
            .args(["-m", &format!("127.0.0.1:{port}:{b}"), "proxy"])
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), Some(cfg)))
    });
    add("haproxy (splice-auto)", 10082, &|port| {
        if !have("haproxy") {
            return Err("haproxy is not installed".into());
        }
        let cfg = write_tmp(
            "haproxy.cfg",
            &format!(
                "global\n  nbthread 1\n  maxconn 7000\n  tune.maxaccept 64\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 10m\n  timeout server 10m\n  option splice-auto\n  maxconn 7000\nlisten p\n  bind 127.0.0.1:{port}\n  server s {b}\n"
            ),
        );
        let c = taskset_cpu1("haproxy", port)
            .args(["-db", "-f"])
            .arg(&cfg)
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), Some(cfg)))
    });
    add("nginx stream", 10083, &|port| {
        let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
        if !have("nginx") || !Path::new(module).exists() {
            return Err("nginx with the stream module is not installed".into());
        }
        let dir = std::env::temp_dir().join(format!("lowport-bench-{}", std::process::id()));
        let cfg = write_tmp(
            "nginx.conf",
            &format!(
                "load_module {module};\nworker_processes 1;\nworker_rlimit_nofile 18000;\ndaemon off;\nmaster_process off;\npid {pid};\nerror_log stderr error;\nevents {{ worker_connections 8000; multi_accept on; }}\nstream {{ server {{ listen 127.0.0.1:{port}; proxy_pass {b}; }} }}\n",
                pid = dir.join("nginx.pid").display()
            ),
        );
        let c = taskset_cpu1("nginx", port)
            .arg("-c")
            .arg(&cfg)
            .arg("-p")
            .arg(&dir)
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), Some(cfg)))
    });
    add("socat (fork)", 10084, &|port| {
        if !have("socat") {
            return Err("socat is not installed".into());
        }
        let c = taskset_cpu1("socat", port)
            .args([
                &format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog=4096"),
                &format!("TCP:{b},nodelay"),
            ])
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), None))
    });
    add("systemd-socket-proxyd", 10085, &|port| {
        let proxyd = [
            "/lib/systemd/systemd-socket-proxyd",
            "/usr/lib/systemd/systemd-socket-proxyd",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("systemd-socket-proxyd is not installed")?;
        if !have("systemd-socket-activate") {
            return Err("systemd-socket-activate is not installed".into());
        }
        let c = taskset_cpu1("systemd-socket-activate", port)
            .args([
                "-l",
                &format!("127.0.0.1:{port}"),
                proxyd,
                "--connections-max=8000",
                &b,
            ])
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), None))
    });
    add("rinetd", 10086, &|port| {
        if !have("rinetd") {
            return Err("rinetd is not installed".into());
        }
        let cfg = write_tmp(
            "rinetd.conf",
            &format!("127.0.0.1 {port} 127.0.0.1 {BACKEND_PORT}\n"),
        );
        let c = taskset_cpu1("rinetd", port)
            .args(["-f", "-c"])
            .arg(&cfg)
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), Some(cfg)))
    });
    add("redir", 10087, &|port| {
        if !have("redir") {
            return Err("redir is not installed".into());
        }
        // redir forks twice per connection: its connection processes are
        // orphans, and the init of a container or a VM may reap them late
        // (here: over ten thousand zombies at once, near pid_max). Run it
        // under this program as their reaper.
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let c = taskset_cpu1(&me.to_string_lossy(), port)
            .args(["--reap", "redir", "-n", &format!("127.0.0.1:{port}"), &b])
            .spawn()
            .map_err(|e| e.to_string())?;
        Ok((Some(c), None))
    });
    // Wait until every started peer accepts.
    for p in &mut peers {
        if p.skipped.is_some() {
            continue;
        }
        let addr: SocketAddr = ([127, 0, 0, 1], p.port).into();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut up = false;
        if p.has_rules() {
            // The DNAT row: its rules, for this check only.
            if let Err(e) = dnat_rules(true) {
                p.skipped = Some(e);
                continue;
            }
        }
        while Instant::now() < deadline {
            if let Some(c) = &mut p.child {
                if let Ok(Some(status)) = c.try_wait() {
                    p.skipped = Some(format!("exited at start ({status})"));
                    break;
                }
            }
            if let Ok(mut s) = TcpStream::connect(addr) {
                // A full round trip: the relay really reaches the backend.
                if s.write_all(b"R").is_ok() && s.write_all(&[0u8; REQ]).is_ok() {
                    let mut buf = [0u8; REQ];
                    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                    if s.read_exact(&mut buf).is_ok() {
                        up = true;
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if p.has_rules() {
            if let Err(e) = dnat_rules(false) {
                p.skipped = Some(e);
            }
        }
        if !up && p.skipped.is_none() {
            p.skipped = Some("did not relay within 5 s".into());
        }
    }
    peers
}

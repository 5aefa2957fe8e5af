//! The Debian package under a real systemd. A minimal Debian root is built
//! with mmdebstrap from this machine's own apt mirror (cached as a tarball
//! under /var/cache/lowport-test/, keyed by release, mirror and package
//! list), unpacked into a private directory, booted with `systemd-nspawn
//! -b --private-network`, and the package built by `cargo deb` is installed
//! into it with dpkg. Everything is checked from outside: commands run in
//! the container through `nsenter`, and traffic goes from a thread that has
//! entered the container's network namespace to its own loopback.
//!
//! A check on another unit (say a watch unit) is one more test function:
//! `Container::boot(release)`, `install_package()`, then `ok("...")`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What the root holds besides the `apt` variant's essentials: systemd as
/// init, both firewalls; the package's own dependencies (libnftnl, libmnl)
/// come with nftables. iproute2, procps and libcap2-bin are for the root
/// tests run on Debian 13 (`ip netns`, `sysctl`, `setcap`, `conntrack`,
/// and `useradd` from passwd for the throwaway users).
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "nftables",
    "iptables",
    "iproute2",
    "procps",
    "libcap2-bin",
    "conntrack",
    "passwd",
];
/// The release the suite is also run on, from the same mirror.
const OTHER_RELEASE: &str = "trixie";
const CACHE_DIR: &str = "/var/cache/lowport-test";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Can this machine boot a container? Then the host's release codename.
/// Outside CI a missing tool skips the test with the reason (None); under
/// CI=true it fails with it.
fn require_container(test: &str) -> Option<String> {
    if !common::require_root(test) {
        return None;
    }
    let missing: Vec<&str> = [
        ("mmdebstrap", "--version"),
        ("systemd-nspawn", "--version"),
        ("nsenter", "--version"),
    ]
    .into_iter()
    .filter(|(cmd, arg)| Command::new(cmd).arg(arg).output().is_err())
    .map(|(cmd, _)| cmd)
    .chain((!cargo(&["deb", "--version"]).is_ok_and(|o| o.status.success())).then_some("cargo-deb"))
    .collect();
    let release = if !missing.is_empty() {
        Err(format!(
            "missing {} (scripts/setup-debian --test installs them)",
            missing.join(", ")
        ))
    } else {
        host_mirror().map(|(release, _)| release)
    };
    match release {
        Ok(release) => Some(release),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: cannot boot a container under CI=true: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

fn cargo(args: &[&str]) -> std::io::Result<Output> {
    Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
}

/// The host's release codename and the Debian mirror its apt uses for it
/// (LOWPORT_TEST_MIRROR overrides the mirror).
fn host_mirror() -> Result<(String, String), String> {
    let os =
        std::fs::read_to_string("/etc/os-release").map_err(|e| format!("/etc/os-release: {e}"))?;
    let codename = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .ok_or("/etc/os-release has no VERSION_CODENAME")?;
    if let Ok(m) = std::env::var("LOWPORT_TEST_MIRROR") {
        return Ok((codename, m));
    }
    let mut texts = vec![std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    for text in &texts {
        // One-line style: deb [options] URI SUITE COMPONENTS...
        for l in text.lines() {
            let mut words = l.split_whitespace().filter(|w| !w.starts_with('['));
            if words.next() == Some("deb") {
                if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
                    if suite == codename && !uri.contains(']') {
                        return Ok((codename, uri.to_owned()));
                    }
                }
            }
        }
        // deb822 style: a paragraph with URIs: and Suites:.
        for para in text.split("\n\n") {
            let field = |name: &str| {
                para.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            if field("Suites:").contains(&codename) {
                if let Some(uri) = field("URIs:").into_iter().next() {
                    return Ok((codename, uri));
                }
            }
        }
    }
    Err(format!(
        "no apt source for {codename} in /etc/apt/sources.list(.d); set LOWPORT_TEST_MIRROR"
    ))
}

/// A cached root tarball for `release`, built on first use.
fn root_tarball(release: &str) -> PathBuf {
    // One build per release at a time; different releases build at once.
    static BUILDING: Mutex<Vec<(String, Arc<Mutex<()>>)>> = Mutex::new(Vec::new());
    let lock = {
        let mut all = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        match all.iter().find(|(r, _)| r == release) {
            Some((_, l)) => Arc::clone(l),
            None => {
                let l = Arc::new(Mutex::new(()));
                all.push((release.to_owned(), Arc::clone(&l)));
                l
            }
        }
    };
    let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
    let (_, mirror) = host_mirror().expect("mirror");
    // FNV-1a: a stable key for the mirror and package list.
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in format!("{mirror} {}", PACKAGES.join(",")).bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    let path = Path::new(CACHE_DIR).join(format!("{release}-{hash:016x}.tar"));
    if path.exists() {
        return path;
    }
    std::fs::create_dir_all(CACHE_DIR).expect("create the cache directory");
    // mmdebstrap picks the output format by the name's extension.
    let partial = path.with_extension(format!("partial-{}.tar", std::process::id()));
    let started = Instant::now();
    let out = Command::new("mmdebstrap")
        .args(["--variant=apt", "--mode=root"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .args([release, partial.to_str().expect("path")])
        .arg(format!("deb {mirror} {release} main"))
        .output()
        .expect("run mmdebstrap");
    assert!(
        out.status.success(),
        "mmdebstrap {release} from {mirror} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &path).expect("store the root tarball");
    // Older roots of this release (another package list or mirror) go.
    for e in std::fs::read_dir(CACHE_DIR).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{release}-")) && e.path() != path {
            let _ = std::fs::remove_file(e.path());
        }
    }
    eprintln!("built {} in {:.0?}", path.display(), started.elapsed());
    path
}

/// The package, built once per test process from the binary under test,
/// kept in memory (each container gets its own copy; no file outlives the
/// test process).
fn package() -> &'static [u8] {
    static DEB: OnceLock<Vec<u8>> = OnceLock::new();
    DEB.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("lowport-deb-{}", std::process::id()));
        // --no-build: the binary is the one `cargo test` just built (this
        // process holds cargo's build lock).
        let out = cargo(&["deb", "--no-build", "--output", dir.to_str().expect("path")])
            .expect("run cargo deb");
        let deb = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"));
        let bytes = deb.as_ref().map(std::fs::read);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "cargo deb failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bytes
            .expect("cargo deb made no .deb")
            .expect("read the .deb")
    })
}

/// A booted container on a private copy of the root; powered off and
/// removed on drop, also when the test fails.
struct Container {
    dir: PathBuf,
    nspawn: Option<Child>,
    leader: u32,
    options: Vec<String>,
}

impl Container {
    fn boot(release: &str) -> Container {
        Container::boot_with(release, &[])
    }

    /// Boot with extra systemd-nspawn options (such as --bind-ro=).
    fn boot_with(release: &str, options: &[String]) -> Container {
        let tarball = root_tarball(release);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // /var/tmp, not /tmp: a private directory outside any tmpfs.
        let dir = PathBuf::from(format!("/var/tmp/lowport-ct-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("make the root directory");
        let mut c = Container {
            dir,
            nspawn: None,
            leader: 0,
            options: options.to_vec(),
        };
        common::sh(
            "tar",
            &[
                "-C",
                c.dir.to_str().expect("path"),
                "-xf",
                tarball.to_str().expect("path"),
            ],
        );
        let test_dir = c.dir.join("opt/lp-test");
        std::fs::create_dir_all(&test_dir).expect("mkdir opt/lp-test");
        std::fs::copy(common::backend_bin(), test_dir.join("backend")).expect("copy the backend");
        std::fs::write(test_dir.join("pkg.deb"), package()).expect("copy the package");
        c.start();
        c
    }

    fn start(&mut self) {
        let child = Command::new("systemd-nspawn")
            .args([
                "--quiet",
                "--boot",
                "--private-network",
                "--register=no",
                "--keep-unit",
            ])
            .args(&self.options)
            .args(["--console=pipe", "-D"])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run systemd-nspawn");
        self.nspawn = Some(child);
        self.wait_booted();
    }

    fn nspawn_pid(&self) -> u32 {
        self.nspawn.as_ref().expect("nspawn running").id()
    }

    /// Wait for the container's init (a child of nspawn in another PID
    /// namespace), then for its boot to finish.
    fn wait_booted(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let own_ns = std::fs::read_link("/proc/self/ns/pid").expect("own pid ns");
        self.leader = loop {
            if let Some(status) = self
                .nspawn
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("systemd-nspawn exited ({status}) before the container booted");
            }
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.nspawn_pid()))
                    .unwrap_or_default();
            let leader = children
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .find(|&p: &u32| {
                    std::fs::read_link(format!("/proc/{p}/ns/pid")).is_ok_and(|ns| ns != own_ns)
                        && std::fs::read_to_string(format!("/proc/{p}/comm"))
                            .is_ok_and(|c| c.trim() == "systemd")
                });
            if let Some(p) = leader {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "the container's init did not start within 60s"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        // Until systemd listens on its private socket, systemctl fails.
        loop {
            let out = self.run("systemctl is-system-running --wait");
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            if state == "running" || (state == "degraded" && self.only_tolerated_failures()) {
                return;
            }
            assert!(
                Instant::now() < deadline && state != "degraded",
                "container boot: {state}\n{}",
                self.run("systemctl --failed --no-legend; journalctl -b -p warning --no-pager | tail -30")
                    .stdout
                    .escape_ascii()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A boot is good enough when nothing of lowport (or the test's
    /// backend) failed: in a container, under load, units about the
    /// kernel-wide state nspawn keeps read-only (systemd-sysctl,
    /// systemd-remount-fs) fail now and then; the tests check lowport's own
    /// units explicitly.
    fn only_tolerated_failures(&self) -> bool {
        let out = self.run("systemctl list-units --failed --plain --no-legend");
        let failed = String::from_utf8_lossy(&out.stdout);
        failed
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .all(|unit| !unit.starts_with("lowport") && !unit.starts_with("lp-test"))
    }

    /// Run a shell command in the container (all its namespaces).
    fn run(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args([
                "-t",
                &self.leader.to_string(),
                "-a",
                "/bin/sh",
                "-c",
                script,
            ])
            .env_clear()
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Run a shell command in the container; panic unless it succeeds.
    fn ok(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "in the container: {script}\nfailed ({}):\n{}{}\njournal:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&self.run("journalctl -b --no-pager -n 25").stdout)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `systemctl show -P PROPERTY UNIT`.
    fn prop(&self, unit: &str, property: &str) -> String {
        self.ok(&format!("systemctl show -P {property} {unit}"))
    }

    /// Wait until `script` succeeds (up to 30 s); panic with its output.
    fn wait_ok(&self, script: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(script);
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            if Instant::now() > deadline {
                return self.ok(script);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until systemd has no job queued: `systemctl restart nftables`
    /// returns when nftables is done, while the restart it propagates to
    /// lowport-rules (PartOf=) may still run.
    fn wait_jobs_done(&self) {
        self.wait_ok("test -z \"$(systemctl list-jobs --no-legend)\"");
        // A oneshot's cgroup is removed after its process exits; a reload
        // in that moment fails on a hybrid (v1) cgroup host with "Failed to
        // attach to cgroup ... status=219/CGROUP" (a systemd race, not
        // lowport's), so wait for the removal.
        self.wait_ok(
            "for h in systemd/ unified/ ''; do \
             ! test -e /sys/fs/cgroup/${h}system.slice/lowport-rules.service || exit 1; done",
        );
    }

    /// Run `f` on a thread inside the container's network namespace.
    fn in_netns<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/proc/{}/ns/net", self.leader);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open the container's netns");
            // SAFETY: the fd is a valid namespace file for the call's
            // duration; setns only moves this short-lived thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in the container's netns panicked")
    }

    /// Connect to `addr` in the container, read the backend's banner, check
    /// an echo.
    fn banner(&self, addr: &str) -> std::io::Result<String> {
        let addr: SocketAddr = addr.parse().expect("address");
        self.in_netns(move || common::tcp_banner(addr))
    }

    /// Wait (up to 30 s) until `addr` serves the backend.
    fn wait_served(&self, addr: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.banner(addr) {
                Ok(b) if b.starts_with("backend ") => return b,
                other if Instant::now() > deadline => panic!("{addr} is not served: {other:?}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn install_package(&self) {
        self.ok("dpkg -i /opt/lp-test/pkg.deb");
    }

    /// The test backend as a service of an unprivileged dynamic user.
    fn start_backend(&self, addr: &str) {
        self.ok(&format!(
            "systemd-run --unit=lp-test-backend -p DynamicUser=yes /opt/lp-test/backend '{addr}'"
        ));
        let probe = if addr.starts_with("127.") {
            addr.to_owned()
        } else {
            format!("[::1]:{}", addr.rsplit(':').next().expect("port"))
        };
        self.wait_served(&probe);
    }

    /// Reboot: nspawn exits with status 133 when its container asks for a
    /// reboot (as it does without --register); boot the root again.
    fn reboot(&mut self) {
        self.ok("systemctl reboot --no-block");
        let mut nspawn = self.nspawn.take().expect("nspawn running");
        let status = nspawn.wait().expect("wait for systemd-nspawn");
        assert_eq!(
            status.code(),
            Some(133),
            "systemd-nspawn on reboot: {status}"
        );
        self.start();
    }

    fn sysctl(&self, name: &str) -> String {
        self.ok(&format!("cat /proc/sys/{}", name.replace('.', "/")))
    }

    /// `systemd-analyze security`'s overall exposure of `unit`, printed.
    fn exposure(&self, unit: &str) -> String {
        let out = self.ok(&format!("systemd-analyze security --no-pager {unit}"));
        let line = out
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or("no exposure line")
            .to_owned();
        eprintln!("{line}");
        line
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut nspawn) = self.nspawn.take() {
            let _ = self.run("systemctl poweroff --no-block");
            let deadline = Instant::now() + Duration::from_secs(30);
            while nspawn.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if nspawn.try_wait().ok().flatten().is_none() {
                // SAFETY: kill has no memory preconditions; the leader is
                // the container's init, ending its PID namespace.
                unsafe { libc::kill(self.leader as i32, libc::SIGKILL) };
                let _ = nspawn.kill();
                let _ = nspawn.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no {key} in:\n{status}"))
}

/// The proxy's main process holds nothing: no capability, not root,
/// no_new_privs.
fn assert_unprivileged(c: &Container) {
    let pid = c.prop("lowport-proxy.service", "MainPID");
    assert_ne!(pid, "0", "lowport-proxy.service has no main process");
    let status = c.ok(&format!("cat /proc/{pid}/status"));
    for key in ["CapEff", "CapPrm", "CapAmb"] {
        assert_eq!(
            status_field(&status, key),
            "0000000000000000",
            "{key}:\n{status}"
        );
    }
    let uids = status_field(&status, "Uid");
    assert!(
        uids.split_whitespace().all(|u| u != "0"),
        "runs as root: {uids}"
    );
    assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{status}");
}

/// Ports a socket unit listens on, from its Listen= property
/// (`[::]:80 (Stream)`).
fn listen_ports(c: &Container, unit: &str) -> Vec<u16> {
    c.prop(unit, "Listen")
        .split(' ')
        .filter(|w| w.contains(':'))
        .filter_map(|w| w.rsplit(':').next()?.parse().ok())
        .collect()
}

/// The service neither crashed nor was killed (a seccomp denial is a
/// SIGSYS), was never restarted, and logged nothing per connection.
fn assert_clean_journal(c: &Container, unit: &str) {
    assert_eq!(c.prop(unit, "NRestarts"), "0", "{unit} restarted");
    let journal = c.ok(&format!("journalctl -b -u {unit} --no-pager -o cat"));
    for bad in [
        "SIGSYS",
        "status=31",
        "Bad system call",
        "DEBUG",
        "core-dump",
    ] {
        assert!(
            !journal.contains(bad),
            "{unit} journal has {bad}:\n{journal}"
        );
    }
}

#[test]
fn proxy_unit_and_socket_activation_under_systemd() {
    let Some(release) = require_container("proxy_unit_and_socket_activation_under_systemd") else {
        return;
    };
    let c = Container::boot(&release);
    c.install_package();
    c.start_backend("[::]:8080");

    // Socket activation: nothing runs until the first client.
    c.ok("systemctl start lowport-proxy.socket");
    assert_eq!(c.prop("lowport-proxy.service", "ActiveState"), "inactive");
    assert_eq!(c.prop("lowport-proxy.service", "MainPID"), "0");
    let ports = listen_ports(&c, "lowport-proxy.socket");
    assert!(!ports.is_empty(), "lowport-proxy.socket listens nowhere");
    for port in ports {
        // Every port the socket holds is served, over IPv4 and IPv6.
        c.wait_served(&format!("127.0.0.1:{port}"));
        c.wait_served(&format!("[::1]:{port}"));
    }
    assert_eq!(c.prop("lowport-proxy.service", "ActiveState"), "active");
    assert_unprivileged(&c);
    eprintln!(
        "lowport-proxy.socket: {}",
        c.exposure("lowport-proxy.service")
    );
    c.ok("systemctl stop lowport-proxy.socket lowport-proxy.service");
    assert_eq!(c.prop("lowport-proxy.service", "Result"), "success");

    // The service alone: systemd gives it CAP_NET_BIND_SERVICE, which it
    // drops once bound.
    c.ok("systemctl start lowport-proxy.service");
    c.wait_served("127.0.0.1:80");
    c.wait_served("[::1]:80");
    assert_unprivileged(&c);
    for n in 1..=2 {
        c.ok("systemctl reload lowport-proxy.service");
        c.wait_ok(&format!(
            "test $(journalctl -b -u lowport-proxy.service --no-pager -o cat \
             | grep -c 'reloaded configuration') -ge {n}"
        ));
    }
    c.ok("systemctl kill -s USR1 lowport-proxy.service");
    c.wait_ok("journalctl -b -u lowport-proxy.service --no-pager -o cat | grep 'counters (' ");
    c.wait_served("127.0.0.1:80");
    c.wait_served("[::1]:80");
    assert_unprivileged(&c);

    // A drained stop: a client connected before the stop is still served.
    let addr: SocketAddr = "127.0.0.1:80".parse().expect("addr");
    let (stream, mut reader) = c.in_netns(move || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut reader = BufReader::new(s.try_clone().expect("clone"));
        let mut banner = String::new();
        reader.read_line(&mut banner).expect("banner");
        assert!(banner.starts_with("backend "), "{banner}");
        (s, reader)
    });
    c.ok("systemctl stop --no-block lowport-proxy.service");
    c.wait_ok("test \"$(systemctl show -P ActiveState lowport-proxy.service)\" = deactivating");
    (&stream)
        .write_all(b"still here\n")
        .expect("write while draining");
    let mut echo = String::new();
    reader.read_line(&mut echo).expect("echo while draining");
    assert_eq!(echo, "still here\n");
    drop((stream, reader));
    c.wait_ok("test \"$(systemctl show -P ActiveState lowport-proxy.service)\" = inactive");
    assert_eq!(c.prop("lowport-proxy.service", "Result"), "success");
    assert_clean_journal(&c, "lowport-proxy.service");
}

fn table_present(c: &Container) -> bool {
    c.run("nft list table inet lowport").status.success()
}

/// The sysctl the loopback example turns on: back to 0 whenever the rules go.
const LOCALNET: &str = "net.ipv4.conf.all.route_localnet";

/// Stop `unit`: lowport's nftables table and route_localnet go with it.
fn stop_removes_rules(c: &Container, unit: &str) {
    c.ok(&format!("systemctl stop {unit}"));
    assert!(
        !table_present(c),
        "the table outlived the stop of {unit}:\n{}",
        c.ok(&format!("journalctl -b --no-pager -u {unit} -u nftables"))
    );
    assert_eq!(c.sysctl(LOCALNET), "0", "route_localnet on after the stop");
    assert_eq!(c.prop(unit, "Result"), "success");
}

/// Apply at boot, survive the firewall's restart and reload, remove on
/// stop; under nftables and under iptables-legacy; then purge.
fn rules_unit_lifecycle(release: &str) {
    let mut c = Container::boot(release);
    c.install_package();
    // As an admin would: a shipped example as the config (this one turns
    // on route_localnet, so a leftover sysctl shows), the unit enabled.
    c.ok("cp /usr/share/doc/lowport/examples/04-loopback-backend.yaml /etc/lowport/lowport.yaml");
    c.ok("systemctl enable lowport-rules.service");
    c.ok(
        "mkdir -p /etc/systemd/system && printf '%s\\n' '[Service]' DynamicUser=yes \
         'ExecStart=/opt/lp-test/backend 127.0.0.1:8080' '[Install]' WantedBy=multi-user.target \
         > /etc/systemd/system/lp-test-backend.service && systemctl enable lp-test-backend.service",
    );
    assert_eq!(c.sysctl(LOCALNET), "0");
    c.reboot();

    assert_eq!(c.prop("lowport-rules.service", "ActiveState"), "active");
    assert!(table_present(&c), "no lowport table after boot");
    assert_eq!(c.sysctl(LOCALNET), "1");
    c.wait_served("127.0.0.1:80");
    eprintln!("{release}: {}", c.exposure("lowport-rules.service"));

    // An upgrade (the same package again) keeps the admin's config and the
    // rules.
    let config = c.ok("cat /etc/lowport/lowport.yaml");
    c.install_package();
    assert_eq!(
        c.ok("cat /etc/lowport/lowport.yaml"),
        config,
        "upgrade changed the config"
    );
    assert_eq!(c.prop("lowport-rules.service", "ActiveState"), "active");
    assert!(table_present(&c), "no lowport table after the upgrade");
    c.wait_served("127.0.0.1:80");

    for action in ["restart", "reload"] {
        c.ok(&format!("systemctl {action} nftables.service"));
        c.wait_jobs_done();
        c.wait_ok("nft list table inet lowport");
        assert_eq!(c.prop("lowport-rules.service", "ActiveState"), "active");
        c.wait_served("127.0.0.1:80");
    }
    stop_removes_rules(&c, "lowport-rules.service");

    // iptables-legacy: the same unit, the other backend.
    c.ok("update-alternatives --quiet --set iptables /usr/sbin/iptables-legacy");
    c.ok("update-alternatives --quiet --set ip6tables /usr/sbin/ip6tables-legacy");
    c.ok("printf 'rules:\\n  backend: iptables\\n' >> /etc/lowport/lowport.yaml");
    c.ok("systemctl start lowport-rules.service");
    assert!(
        c.ok("iptables-legacy-save -t nat").contains("lowport"),
        "no lowport chains in iptables-legacy"
    );
    assert_eq!(c.sysctl(LOCALNET), "1");
    c.wait_served("127.0.0.1:80");
    c.ok("systemctl restart nftables.service");
    c.wait_jobs_done();
    c.wait_served("127.0.0.1:80");
    c.ok("systemctl stop lowport-rules.service");
    assert!(
        !c.ok("iptables-legacy-save -t nat").contains("lowport"),
        "lowport chains outlived the unit's stop"
    );
    assert_eq!(c.sysctl(LOCALNET), "0");
    assert_eq!(c.prop("lowport-rules.service", "Result"), "success");
    assert_clean_journal(&c, "lowport-rules.service");

    // Purge with rules in place, from the unit (iptables-legacy) and by
    // hand (nftables): nothing of lowport is left.
    c.ok("lowport rules apply --backend nftables");
    c.ok("systemctl start lowport-rules.service");
    assert!(table_present(&c));
    assert_eq!(c.sysctl(LOCALNET), "1");
    c.ok("apt-get purge -y -q lowport");
    assert!(!c.ok("iptables-legacy-save -t nat").contains("lowport"));
    assert!(!table_present(&c));
    assert_eq!(c.sysctl(LOCALNET), "0", "route_localnet changed by purge");
    c.reboot();
    assert!(!table_present(&c));
    assert!(!c.ok("iptables-legacy-save -t nat").contains("lowport"));
    assert_eq!(c.sysctl(LOCALNET), "0");
    let left = c.ok(
        "find / -xdev \\( -path /proc -o -path /sys -o -path /var/log/journal \\) -prune \
         -o -name '*lowport*' -print",
    );
    assert_eq!(left, "", "left after purge");
}

#[test]
fn rules_unit_at_boot_through_firewall_restarts_and_purge() {
    let Some(release) = require_container("rules_unit_at_boot_through_firewall_restarts_and_purge")
    else {
        return;
    };
    rules_unit_lifecycle(&release);
}

/// `lowport rules watch` as the package's unit runs it: ready (Type=notify)
/// once the first apply is in, the rules survive `nft flush ruleset` and
/// `nft -f` of a config that flushes, a reload re-applies, and a stop
/// removes the rules and restores route_localnet.
#[test]
fn watch_unit_keeps_the_rules_through_a_flush() {
    let Some(release) = require_container("watch_unit_keeps_the_rules_through_a_flush") else {
        return;
    };
    let c = Container::boot(&release);
    c.install_package();
    c.ok("cp /usr/share/doc/lowport/examples/04-loopback-backend.yaml /etc/lowport/lowport.yaml");
    c.start_backend("127.0.0.1:8080");
    assert_eq!(c.sysctl(LOCALNET), "0");
    // Type=notify: start returns once the watch said READY=1.
    c.ok("systemctl start lowport-rules-watch.service");
    assert_eq!(
        c.prop("lowport-rules-watch.service", "ActiveState"),
        "active"
    );
    assert!(
        table_present(&c),
        "no lowport table once the watch is ready"
    );
    assert_eq!(c.sysctl(LOCALNET), "1");
    c.wait_served("127.0.0.1:80");
    eprintln!("{release}: {}", c.exposure("lowport-rules-watch.service"));

    c.ok("nft flush ruleset");
    assert!(table_present(&c), "the table went with a flush");
    c.wait_served("127.0.0.1:80");
    c.ok("printf 'flush ruleset\\ntable inet filter {\\n chain input { type filter hook input priority 0; policy accept; }\\n}\\n' > /tmp/fw.nft && nft -f /tmp/fw.nft");
    assert!(table_present(&c), "the table went with nft -f");
    c.wait_served("127.0.0.1:80");
    c.ok("systemctl reload lowport-rules-watch.service");
    c.wait_jobs_done();
    assert_eq!(
        c.prop("lowport-rules-watch.service", "ActiveState"),
        "active"
    );
    c.wait_served("127.0.0.1:80");

    stop_removes_rules(&c, "lowport-rules-watch.service");
    assert_clean_journal(&c, "lowport-rules-watch.service");
}

#[test]
fn rules_unit_on_debian_13() {
    if require_container("rules_unit_on_debian_13").is_none() {
        return;
    }
    rules_unit_lifecycle(OTHER_RELEASE);
}

/// The newest build of test binary `name` (target/<profile>/deps/name-HASH).
fn test_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    std::fs::read_dir(deps)
        .expect("read deps dir")
        .flatten()
        .filter(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            f.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|hash| hash.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .unwrap_or_else(|| {
            panic!(
                "no test binary {name} in {}: run the whole suite",
                deps.display()
            )
        })
}

/// The root tests that depend on the release (nft's listing, /tmp mounted
/// nosuid, systemd's socket activation, iptables) run on Debian 13 too:
/// the checkout is bound read-only at its own path, so the test binaries
/// find lowport, the examples and the golden listings where they were built.
#[test]
fn root_tests_pass_on_debian_13() {
    if require_container("root_tests_pass_on_debian_13").is_none() {
        return;
    }
    let manifest = env!("CARGO_MANIFEST_DIR");
    let binaries: Vec<PathBuf> = [
        "rules_nft",
        "nft_backend",
        "iptables_backend",
        "proxy_privilege",
        "config_files",
    ]
    .iter()
    .map(|n| test_binary(n))
    .collect();
    let c = Container::boot_with(OTHER_RELEASE, &[format!("--bind-ro={manifest}")]);
    let mut failed = String::new();
    // Files of the user who ran sudo are trusted (SUDO_UID), as on the host.
    let sudo = std::env::var("SUDO_UID")
        .ok()
        .and_then(|u| u.parse::<u32>().ok());
    let sudo = sudo.map(|u| format!("SUDO_UID={u} ")).unwrap_or_default();
    // One test at a time: the tests call iptables-legacy without -w, which
    // fails instead of waiting while another test holds the xtables lock.
    for bin in &binaries {
        let out = c.run(&format!(
            "cd / && CI=true {sudo}{} --test-threads=1 2>&1",
            bin.display()
        ));
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.contains("SKIPPED") {
            failed.push_str(&format!("{} on {OTHER_RELEASE}:\n{text}\n", bin.display()));
        }
    }
    assert!(failed.is_empty(), "{failed}");
}

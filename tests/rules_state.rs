//! lowport's state around `rules apply` and `remove`: the sysctl ledger
//! (keyed so a new namespace never inherits it, kept where nobody else can
//! forge it or plant links), the lock that serialises applies and
//! removes, the order of rules and sysctls (route_localnet is never on
//! without the guard), and what a failure or an interruption leaves.
//! Every test runs in its own namespace (nftables backend) with a private
//! state directory.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{private_dir, require_root, state_dir, Netns};
use lowport::config::RulesSettings;
use lowport::firewall::ledger;
use lowport::firewall::nft::Nftables;
use lowport::firewall::plan::{Family, Hook, NatAction, NatRule, RulePlan, RuleSet, Sysctl};
use lowport::firewall::{self, Backend, FirewallError};
use lowport::mapping::L4;

const LOCALNET: &str = "net.ipv4.conf.all.route_localnet";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The file name of `ns`'s ledger (it holds the namespace's cookie).
fn ledger_name(ns: &Netns) -> String {
    ns.enter(|| ledger::ledger_name().expect("netns cookie"))
}

/// The inode of `ns`, which an older lowport named its ledger after.
fn netns_inode(ns: &Netns) -> u64 {
    std::fs::metadata(format!("/run/netns/{}", ns.name))
        .expect("stat netns")
        .ino()
}

/// Removes a directory this test made, also when it fails.
struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn chown_nobody(path: &Path) {
    std::os::unix::fs::lchown(path, Some(65534), Some(65534)).expect("chown nobody");
}

#[test]
fn a_new_namespace_does_not_inherit_a_dead_namespaces_ledger() {
    if !require_root("a_new_namespace_does_not_inherit_a_dead_namespaces_ledger") {
        return;
    }
    let ns = Netns::new("inherit");
    ns.ok("sysctl", &["-w", "net.ipv4.ip_forward=1"]);
    // What a namespace that had this inode before, and died without
    // `rules remove`, left behind.
    let dir = state_dir();
    let stale = dir.join(format!("sysctl-netns-{}", netns_inode(&ns)));
    std::fs::write(&stale, "net.ipv4.ip_forward=0\n").expect("write stale ledger");
    let out = ns.lowport(&["-m", "80:8080", "rules", "apply"]);
    let _ = std::fs::remove_file(&stale);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        ns.sysctl("net.ipv4.ip_forward"),
        "1",
        "apply switched routing off from another namespace's ledger: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_state_dir_someone_else_owns_is_refused_before_the_kernel_is_touched() {
    if !require_root("a_state_dir_someone_else_owns_is_refused_before_the_kernel_is_touched") {
        return;
    }
    let ns = Netns::new("owner");
    let dir = TempDir(private_dir("lowport-test-foreign"));
    chown_nobody(&dir.0);
    let out = ns
        .command(common::lowport_bin())
        .env("LOWPORT_STATE_DIR", &dir.0)
        .args(["-m", "80:127.0.0.1:8080", "rules", "apply"])
        .output()
        .expect("run lowport");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("owned by uid 65534"),
        "{}",
        stderr(&out)
    );
    assert!(ns.nft_table().is_none(), "rules installed anyway");
    assert_eq!(ns.sysctl(LOCALNET), "0");

    // Writable by others: refused too.
    let open = TempDir(private_dir("lowport-test-open"));
    std::fs::set_permissions(&open.0, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = ns
        .command(common::lowport_bin())
        .env("LOWPORT_STATE_DIR", &open.0)
        .args(["-m", "80:8080", "rules", "apply"])
        .output()
        .expect("run lowport");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("writable by others"),
        "{}",
        stderr(&out)
    );
    assert!(ns.nft_table().is_none(), "rules installed anyway");
}

#[test]
fn a_ledger_root_did_not_write_is_not_trusted() {
    if !require_root("a_ledger_root_did_not_write_is_not_trusted") {
        return;
    }
    let ns = Netns::new("forged");
    ns.lowport_ok(&["-m", "80:127.0.0.1:8080", "rules", "apply"]);
    ns.lowport_ok(&["rules", "remove"]);
    assert_eq!(ns.sysctl(LOCALNET), "0");
    // A forged ledger, under the names this and older versions use,
    // claiming route_localnet and forwarding were on before lowport.
    let dir = state_dir();
    let forged = [
        dir.join(ledger_name(&ns)),
        dir.join(format!("sysctl-netns-{}", netns_inode(&ns))),
    ];
    for path in &forged {
        std::fs::write(path, format!("{LOCALNET}=1\nnet.ipv4.ip_forward=1\n")).expect("plant");
        chown_nobody(path);
    }
    let out = ns.lowport(&["rules", "remove"]);
    for path in &forged {
        let _ = std::fs::remove_file(path);
    }
    assert_eq!(ns.sysctl(LOCALNET), "0", "remove trusted a forged ledger");
    assert_eq!(ns.sysctl("net.ipv4.ip_forward"), "0");
    assert!(!out.status.success(), "remove accepted a forged ledger");
    assert!(
        stderr(&out).contains("did not write it"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn links_in_the_state_dir_are_never_followed() {
    if !require_root("links_in_the_state_dir_are_never_followed") {
        return;
    }
    let ns = Netns::new("link");
    let victim_dir = TempDir(private_dir("lowport-test-victim"));
    let victim = victim_dir.0.join("victim");
    std::fs::write(&victim, "precious\n").expect("write victim");
    let dir = state_dir();
    let name = ledger_name(&ns);
    let links = [
        dir.join(format!(".{name}.tmp")),
        dir.join(format!("sysctl-netns-{}.tmp", netns_inode(&ns))),
    ];
    for link in &links {
        std::os::unix::fs::symlink(&victim, link).expect("plant link");
    }
    let out = ns.lowport(&["-m", "80:127.0.0.1:8080", "rules", "apply"]);
    for link in &links {
        let _ = std::fs::remove_file(link);
    }
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "apply wrote through a link"
    );
    ns.lowport_ok(&["rules", "remove"]);

    // A link in place of the ledger itself is refused, not read.
    let ledger = dir.join(&name);
    std::os::unix::fs::symlink(&victim, &ledger).expect("plant link");
    let out = ns.lowport(&["-m", "80:8080", "rules", "apply"]);
    let _ = std::fs::remove_file(&ledger);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

#[test]
fn apply_waits_for_the_lock_of_another_apply() {
    if !require_root("apply_waits_for_the_lock_of_another_apply") {
        return;
    }
    let ns = Netns::new("lock");
    let dir = state_dir();
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("lock"))
        .expect("open lock");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    let mut child = ns
        .command(common::lowport_bin())
        .args(["-m", "80:8080", "rules", "apply"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start lowport");
    // While the lock is held, nothing happens (however long it is held;
    // a second is enough for an unlocked apply to finish).
    std::thread::sleep(std::time::Duration::from_secs(1));
    let early = child.try_wait().expect("try_wait");
    let table_early = ns.nft_table();
    drop(lock);
    let status = child.wait().expect("wait");
    assert!(
        early.is_none(),
        "apply did not wait for the lock: {early:?}"
    );
    assert!(
        table_early.is_none(),
        "apply changed rules under another's lock"
    );
    assert!(status.success());
    assert!(ns.nft_table().is_some());
}

#[test]
fn an_unusable_state_dir_leaves_the_previous_rules_serving() {
    if !require_root("an_unusable_state_dir_leaves_the_previous_rules_serving") {
        return;
    }
    let ns = Netns::new("rostate");
    ns.lowport_ok(&["-m", "80:127.0.0.1:8080", "rules", "apply"]);
    let before = ns.nft_table().expect("table");
    // A file where the directory should be.
    let scratch = TempDir(private_dir("lowport-test-file"));
    let file = scratch.0.join("state");
    std::fs::write(&file, "").expect("write file");
    let out = ns
        .command(common::lowport_bin())
        .env("LOWPORT_STATE_DIR", &file)
        .args(["-m", "81:8081", "rules", "apply"])
        .output()
        .expect("run lowport");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&file.display().to_string()),
        "{}",
        stderr(&out)
    );
    assert_eq!(ns.nft_table().as_deref(), Some(before.as_str()));
    assert_eq!(ns.sysctl(LOCALNET), "1");
    ns.lowport_ok(&["rules", "remove"]);
}

/// A backend that checks, at each change, that route_localnet is not on
/// while lowport's guard is about to go (or to be missing).
struct Watchful {
    inner: Nftables,
    violations: Arc<Mutex<Vec<String>>>,
    /// Fail the next apply after installing (as a kill would leave it).
    break_next_apply: bool,
}

fn route_localnet_on() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/route_localnet")
        .is_ok_and(|v| v.trim() == "1")
}

impl Backend for Watchful {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn place(&self) -> &'static str {
        self.inner.place()
    }
    fn apply(&mut self, rules: &RuleSet) -> Result<(), FirewallError> {
        if route_localnet_on() && !rules.loopback_guard {
            self.violations
                .lock()
                .unwrap()
                .push("rules without the guard installed while route_localnet=1".into());
        }
        self.inner.apply(rules)?;
        if std::mem::take(&mut self.break_next_apply) {
            return Err(FirewallError::Other("killed".into()));
        }
        Ok(())
    }
    fn remove(&mut self) -> Result<(), FirewallError> {
        if route_localnet_on() {
            self.violations
                .lock()
                .unwrap()
                .push("guard removed while route_localnet=1".into());
        }
        self.inner.remove()
    }
    fn list(&mut self) -> Result<Option<RuleSet>, FirewallError> {
        self.inner.list()
    }
    fn render(&self, rules: &RuleSet) -> String {
        self.inner.render(rules)
    }
}

fn redirect(port: u16, action: NatAction, guard: bool) -> RulePlan {
    let rule = |hook| NatRule {
        comment: "web".into(),
        hook,
        l4: L4::Tcp,
        family: match action {
            NatAction::Dnat { .. } => Some(Family::V4),
            NatAction::Redirect { .. } => None,
        },
        daddr: None,
        dport: port,
        action,
    };
    RulePlan {
        rules: RuleSet {
            nat: vec![rule(Hook::Prerouting), rule(Hook::Output)],
            masquerade: vec![],
            loopback_guard: guard,
        },
        sysctls: if guard {
            vec![Sysctl::RouteLocalnet]
        } else {
            vec![]
        },
        warnings: vec![],
    }
}

fn loopback_plan() -> RulePlan {
    redirect(
        80,
        NatAction::Dnat {
            addr: "127.0.0.1".parse().unwrap(),
            port: 8080,
        },
        true,
    )
}

fn plain_plan() -> RulePlan {
    redirect(80, NatAction::Redirect { port: 8080 }, false)
}

#[test]
fn route_localnet_is_never_on_without_the_guard() {
    if !require_root("route_localnet_is_never_on_without_the_guard") {
        return;
    }
    let ns = Netns::new("order");
    let dir = state_dir();
    let violations = Arc::new(Mutex::new(Vec::new()));
    let seen = violations.clone();
    let localnet_after = ns.enter(move || {
        let mut b = Watchful {
            inner: Nftables::new(),
            violations: seen,
            break_next_apply: false,
        };
        let settings = RulesSettings::default();
        let mut after = Vec::new();
        for plan in [loopback_plan(), plain_plan(), loopback_plan()] {
            firewall::apply_in(&dir, &mut b, &plan, &settings).expect("apply");
            after.push(route_localnet_on());
        }
        firewall::remove_in(&dir, &mut b).expect("remove");
        after.push(route_localnet_on());
        after
    });
    assert_eq!(localnet_after, [true, false, true, false]);
    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "{v:?}");
}

#[test]
fn an_interrupted_apply_is_reported_by_check_and_repaired_by_the_next_apply() {
    if !require_root("an_interrupted_apply_is_reported_by_check_and_repaired_by_the_next_apply") {
        return;
    }
    let ns = Netns::new("interrupt");
    let dir = state_dir();
    let failed = ns.enter(move || {
        let mut b = Watchful {
            inner: Nftables::new(),
            violations: Arc::default(),
            break_next_apply: true,
        };
        firewall::apply_in(&dir, &mut b, &loopback_plan(), &RulesSettings::default()).is_err()
    });
    assert!(failed);
    let check = ns.lowport(&["-m", "80:127.0.0.1:8080", "check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains("was interrupted"),
        "check did not notice:\n{text}"
    );
    assert_eq!(check.status.code(), Some(1));

    let out = ns.lowport_ok(&["-m", "80:127.0.0.1:8080", "rules", "apply"]);
    assert!(out.contains("interrupted"), "{out}");
    assert_eq!(ns.sysctl(LOCALNET), "1");
    let check = ns.lowport(&["-m", "80:127.0.0.1:8080", "check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(!text.contains("was interrupted"), "{text}");
    ns.lowport_ok(&["rules", "remove"]);
    assert_eq!(ns.sysctl(LOCALNET), "0");
}

//! The test scaffolding itself works: namespaces, veth LAN, an unprivileged
//! backend, and traffic between hosts.
mod common;
use common::*;

#[test]
fn lan_and_unprivileged_backend_work() {
    if !require_root("lan_and_unprivileged_backend_work") {
        return;
    }
    let mut lan = Lan::new("smk");
    lan.host.start_backend("0.0.0.0:8080");
    let banner = lan
        .remote
        .tcp_banner(&format!("{}:8080", Lan::HOST_V4))
        .expect("remote reaches backend");
    assert!(
        banner.contains(&format!("peer {}:", Lan::REMOTE_V4)),
        "{banner}"
    );
    let uid = lan
        .host
        .ok("sh", &["-c", "ps -o user= -C backend | sort -u"]);
    assert_eq!(uid.trim(), "nobody");
    let ns_name = lan.host.name.clone();
    drop(lan);
    let list = sh("ip", &["netns", "list"]);
    assert!(!list.contains(&ns_name), "namespace {ns_name} left behind");
}

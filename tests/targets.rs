//! Targets given as names are checked like literal addresses: a name that
//! resolves (here through the namespace's own /etc/hosts) to an address
//! that cannot be a target gives no rules.

mod common;

use common::{require_root, Netns};

#[test]
fn names_resolving_to_unusable_addresses_give_no_rules() {
    if !require_root("names_resolving_to_unusable_addresses_give_no_rules") {
        return;
    }
    let ns = Netns::new("targets");
    ns.etc_file(
        "hosts",
        "127.0.0.1 localhost\n0.0.0.0 zero.test\n224.0.0.1 group.test\n255.255.255.255 all.test\n",
    );
    for (name, addr) in [
        ("zero.test", "0.0.0.0"),
        ("group.test", "224.0.0.1"),
        ("all.test", "255.255.255.255"),
    ] {
        let out = ns.lowport(&["-m", &format!("80:{name}:8080"), "rules", "apply"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(&format!("resolves to {addr}")), "{err}");
        assert!(ns.nft_table().is_none(), "{name}: rules installed");
    }
    // The literal broadcast address too.
    let out = ns.lowport(&["-m", "80:255.255.255.255:8080", "rules", "apply"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(ns.nft_table().is_none());
}

/// The proxy resolves a target name per connection: an address that
/// cannot be a backend is not connected to either, and the client is
/// reset with the reason logged.
#[test]
fn the_proxy_does_not_connect_to_unusable_resolved_addresses() {
    if !require_root("the_proxy_does_not_connect_to_unusable_resolved_addresses") {
        return;
    }
    use std::io::Read;
    let ns = Netns::new("pxtargets");
    ns.etc_file("hosts", "127.0.0.1 localhost\n255.255.255.255 all.test\n");
    let mut proxy = ns
        .command(common::lowport_bin())
        .args(["-m", "9080:all.test:8080", "proxy"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let addr: std::net::SocketAddr = "127.0.0.1:9080".parse().expect("addr");
    let ended = ns.enter(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut c = loop {
            match std::net::TcpStream::connect(addr) {
                Ok(c) => break c,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => panic!("connect: {e}"),
            }
        };
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 8];
        c.read(&mut buf)
    });
    let _ = proxy.kill();
    let _ = proxy.wait();
    let mut log = String::new();
    proxy
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    assert!(
        matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the client saw {ended:?}\n{log}"
    );
    assert!(
        log.contains("255.255.255.255: the broadcast address, not a backend"),
        "{log}"
    );
}

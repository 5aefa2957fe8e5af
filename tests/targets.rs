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

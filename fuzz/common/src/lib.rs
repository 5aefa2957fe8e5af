//! Shared by the fuzz targets and the seed maker: a host that answers
//! without a network, and the rule set whose chains every decoder knows.

use std::net::IpAddr;

use lowport::firewall::plan::{self, HostView, RuleSet};

/// Names resolve to fixed addresses (a fuzzer must not do DNS); a few
/// addresses count as this host's.
pub struct FakeHost;

impl HostView for FakeHost {
    fn resolve(&self, name: &str) -> std::io::Result<Vec<IpAddr>> {
        let n = name.len() as u8;
        Ok(vec![
            IpAddr::from([10, 0, 0, n.max(1)]),
            IpAddr::from([0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n)]),
        ])
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || ip == IpAddr::from([192, 0, 2, 1])
    }
}

/// Parse a config and plan it, as `rules apply` would.
pub fn plan_yaml(text: &str) -> Option<RuleSet> {
    let config = lowport::config::parse_str(text, std::path::Path::new("fuzz.yaml")).ok()?;
    plan::plan(&config.mappings, &FakeHost).ok().map(|p| p.rules)
}

/// A rule set with every chain lowport makes (nat, masquerade, guard).
pub fn all_chains() -> RuleSet {
    plan_yaml(
        "mappings:\n  - {listen: 80, to: \"127.0.0.1:8080\"}\n  - {listen: 81, to: \"10.9.9.9:8080\"}\n",
    )
    .expect("a plan with every chain")
}

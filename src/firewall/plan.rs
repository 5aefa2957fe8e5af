//! Mappings → the rules a backend installs. Pure: no netlink, no root, so
//! every decision about the kernel's traps is unit-tested here.
//!
//! The same [`RuleSet`] type is what a backend reads back from the kernel, so
//! "did the apply take?" is an equality check and `rules show` prints the
//! kernel's truth, not the config's.

use std::fmt;
use std::net::IpAddr;

use crate::mapping::{Listen, Mapping, TargetHost, L4};

/// Priority of lowport's NAT chains. The first NAT rule that matches a
/// connection wins, and lower priorities run first: Docker, kube-proxy and
/// netavark use -100 (`dstnat`), firewalld -90. -105 runs before them all.
pub const NAT_PRIORITY: i32 = -105;

/// Priority of the masquerade chain for remote targets: just before the
/// usual `srcnat` (100) so another table's SNAT cannot pre-empt it.
pub const SNAT_PRIORITY: i32 = 95;

/// Priority of the loopback guard: `raw` (-300), before conntrack and NAT,
/// so a packet that arrives already addressed to 127/8 is dropped before
/// anything could deliver it.
pub const GUARD_PRIORITY: i32 = -300;

/// Which netfilter hook a NAT rule sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// Packets arriving from other hosts.
    Prerouting,
    /// Packets this host sends (local clients). Such rules also match only
    /// local destinations (`fib daddr type local`), so that the host's own
    /// connections to port 80 elsewhere are never redirected.
    Output,
}

/// IP family a rule is restricted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// What a matching packet's destination becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatAction {
    /// Same host, new port (`redirect to :PORT`): the destination becomes
    /// the address the packet arrived on (loopback for local clients).
    Redirect { port: u16 },
    /// Explicit address and port (`dnat ip to ADDR:PORT`).
    Dnat { addr: IpAddr, port: u16 },
}

/// One destination-NAT rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NatRule {
    pub hook: Hook,
    /// `None`: both families (only possible for [`NatAction::Redirect`]).
    pub family: Option<Family>,
    /// Match this destination address (its family equals `family`).
    pub daddr: Option<IpAddr>,
    pub l4: L4,
    pub dport: u16,
    pub action: NatAction,
    /// The mapping's label; installed as the rule's comment.
    pub comment: String,
}

/// Source NAT for traffic that was sent on to another host, so that the
/// replies come back through this one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MasqRule {
    /// The remote target's address and port (after DNAT).
    pub daddr: IpAddr,
    pub l4: L4,
    pub dport: u16,
    pub comment: String,
}

/// Everything lowport's table holds. Built from mappings by [`plan`], and
/// decoded from the kernel by each backend's `list`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSet {
    /// In installation order: all prerouting rules, then all output rules.
    pub nat: Vec<NatRule>,
    pub masquerade: Vec<MasqRule>,
    /// Drop packets to 127.0.0.0/8 that did not arrive on `lo`. Needed
    /// whenever `route_localnet` is on, or neighbours could reach services
    /// bound to 127.0.0.1 directly.
    pub loopback_guard: bool,
}

impl RuleSet {
    /// NAT rules on one hook, in order.
    pub fn on(&self, hook: Hook) -> impl Iterator<Item = &NatRule> {
        self.nat.iter().filter(move |r| r.hook == hook)
    }
}

/// A kernel setting a plan needs switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sysctl {
    /// `net.ipv4.conf.all.route_localnet`: lets a prerouting DNAT reach
    /// 127.0.0.1 (the kernel otherwise drops it as a martian).
    RouteLocalnet,
    /// `net.ipv4.ip_forward`: remote IPv4 targets.
    Ipv4Forward,
    /// `net.ipv6.conf.all.forwarding`: remote IPv6 targets.
    Ipv6Forward,
}

impl Sysctl {
    /// Every sysctl lowport may change.
    pub const ALL: [Sysctl; 3] = [
        Sysctl::RouteLocalnet,
        Sysctl::Ipv4Forward,
        Sysctl::Ipv6Forward,
    ];

    /// Dotted name, as `sysctl` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Sysctl::RouteLocalnet => "net.ipv4.conf.all.route_localnet",
            Sysctl::Ipv4Forward => "net.ipv4.ip_forward",
            Sysctl::Ipv6Forward => "net.ipv6.conf.all.forwarding",
        }
    }

    /// Path under /proc.
    pub fn path(self) -> String {
        format!("/proc/sys/{}", self.name().replace('.', "/"))
    }

    /// Forwarding sysctls are only changed when the config allows it.
    pub fn is_forwarding(self) -> bool {
        matches!(self, Sysctl::Ipv4Forward | Sysctl::Ipv6Forward)
    }
}

impl fmt::Display for Sysctl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The full plan: rules plus the host settings they depend on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RulePlan {
    pub rules: RuleSet,
    /// Sysctls that must be 1 for the rules to work, sorted.
    pub sysctls: Vec<Sysctl>,
    /// Things that will not work as a user might expect, said once each.
    pub warnings: Vec<String>,
}

/// What planning needs to know about the host, behind a trait so tests can
/// answer without a network.
pub trait HostView {
    /// Resolve a target host name to addresses.
    fn resolve(&self, name: &str) -> std::io::Result<Vec<IpAddr>>;
    /// Is this address one of this host's own (so no forwarding is needed)?
    fn is_local(&self, ip: IpAddr) -> bool;
}

/// Why mappings cannot become rules. These are configuration errors (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{mapping}: cannot resolve target host {host:?}; use an address, or check DNS")]
    Resolve {
        mapping: String,
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{mapping}: target host {host:?} resolves to {addr}, {what}, which cannot be a target; \
         correct the name's address (DNS, /etc/hosts) or write an address"
    )]
    BadAddress {
        mapping: String,
        host: String,
        addr: IpAddr,
        what: &'static str,
    },
    #[error(
        "{mapping}: listens on {listen_family} only but the target {target} has no {listen_family} \
         address; kernel NAT cannot translate between IPv4 and IPv6 (use `lowport proxy`, \
         or a target of the same family)"
    )]
    FamilyMismatch {
        mapping: String,
        listen_family: Family,
        target: String,
    },
}

/// Turn validated mappings into the rules and settings that serve them.
pub fn plan(mappings: &[Mapping], host: &dyn HostView) -> Result<RulePlan, PlanError> {
    let mut pre = Vec::new();
    let mut out = Vec::new();
    let mut masquerade = Vec::new();
    let mut masquerade_seen = std::collections::HashSet::new();
    let mut sysctls = Vec::new();
    let mut warnings = Vec::new();

    for m in mappings {
        let comment = m.label();
        let port = m.target.port.get();
        let families = listen_families(&m.listen);
        // This mapping's rules start here: `covers` looks at them only
        // (scanning every earlier rule made planning quadratic).
        let (pre_start, out_start) = (pre.len(), out.len());
        // Each family the client may use, with the target address it goes to.
        let mut targets: Vec<FamilyTarget> = Vec::new();
        match &m.target.host {
            TargetHost::Local => targets.push((family_restriction(&m.listen), None)),
            TargetHost::Ip(ip) => targets.extend(per_family(m, &families, &[*ip])?),
            TargetHost::Name(name) => {
                let addrs = host.resolve(name).map_err(|source| PlanError::Resolve {
                    mapping: m.to_string(),
                    host: name.clone(),
                    source,
                })?;
                for &addr in &addrs {
                    if let Some(what) = crate::mapping::unusable_target(addr) {
                        return Err(PlanError::BadAddress {
                            mapping: m.to_string(),
                            host: name.clone(),
                            addr,
                            what,
                        });
                    }
                }
                targets.extend(per_family(m, &families, &addrs)?);
            }
        }
        for (family, addr) in targets {
            let action = match addr {
                None => NatAction::Redirect { port },
                Some(addr) => NatAction::Dnat { addr, port },
            };
            let daddr = m.listen.addr.filter(|a| !a.is_unspecified());
            let remote_ok = match addr {
                Some(IpAddr::V6(a)) if a.is_loopback() => {
                    warnings.push(format!(
                        "{m}: IPv6 has no route_localnet, so only clients on this host reach \
                         [::1]:{port}; bind the backend to [::] or an address, or use `lowport proxy`"
                    ));
                    false
                }
                Some(IpAddr::V4(a)) if a.is_loopback() => {
                    push_unique(&mut sysctls, Sysctl::RouteLocalnet);
                    true
                }
                Some(a) if !host.is_local(a) => {
                    if a.is_ipv4() {
                        // A local client on 127.0.0.1:80 sent on to another
                        // host leaves with source 127.0.0.1 (masquerade fixes
                        // it only after routing); the kernel drops that as a
                        // martian unless route_localnet is on, which in turn
                        // needs the guard.
                        push_unique(&mut sysctls, Sysctl::RouteLocalnet);
                    }
                    push_unique(
                        &mut sysctls,
                        match a {
                            IpAddr::V4(_) => Sysctl::Ipv4Forward,
                            IpAddr::V6(_) => Sysctl::Ipv6Forward,
                        },
                    );
                    for l4 in m.protocol.l4s() {
                        let masq = MasqRule {
                            daddr: a,
                            l4,
                            dport: port,
                            comment: comment.clone(),
                        };
                        if masquerade_seen.insert(masq.clone()) {
                            masquerade.push(masq);
                        }
                    }
                    true
                }
                _ => true,
            };
            for l4 in m.protocol.l4s() {
                let rule = |hook| NatRule {
                    hook,
                    family,
                    daddr,
                    l4,
                    dport: m.listen.port.get(),
                    action,
                    comment: comment.clone(),
                };
                if remote_ok {
                    pre.push(rule(Hook::Prerouting));
                }
                out.push(rule(Hook::Output));
            }
        }
        if let (TargetHost::Ip(_) | TargetHost::Name(_), None) = (&m.target.host, m.listen.addr) {
            for missing in [Family::V4, Family::V6] {
                if !covers(&pre[pre_start..], &out[out_start..], m, missing) {
                    warnings.push(format!(
                        "{m}: {missing} clients are not mapped: the target has no {missing} address"
                    ));
                }
            }
        }
    }
    sysctls.sort();
    let loopback_guard = sysctls.contains(&Sysctl::RouteLocalnet);
    pre.extend(out);
    Ok(RulePlan {
        rules: RuleSet {
            nat: pre,
            masquerade,
            loopback_guard,
        },
        sysctls,
        warnings,
    })
}

/// The families a listen spec accepts clients on.
fn listen_families(listen: &Listen) -> Vec<Family> {
    match listen.addr {
        None => vec![Family::V4, Family::V6],
        Some(ip) => vec![Family::of(ip)],
    }
}

/// The family a redirect rule must be restricted to, if any.
fn family_restriction(listen: &Listen) -> Option<Family> {
    listen.addr.map(Family::of)
}

/// For each family the mapping listens on, the first target address of
/// that family. A family with no target address is skipped (and warned
/// about by the caller) unless the mapping listens on that family alone.
/// A client family (None: both) and the address it is sent to (None: this
/// host, by redirect).
type FamilyTarget = (Option<Family>, Option<IpAddr>);

fn per_family(
    m: &Mapping,
    families: &[Family],
    addrs: &[IpAddr],
) -> Result<Vec<FamilyTarget>, PlanError> {
    let mut out = Vec::new();
    for &family in families {
        match addrs.iter().find(|a| Family::of(**a) == family) {
            Some(addr) => out.push((Some(family), Some(*addr))),
            None if families.len() == 1 => {
                return Err(PlanError::FamilyMismatch {
                    mapping: m.to_string(),
                    listen_family: family,
                    target: m.target.to_string(),
                })
            }
            None => {}
        }
    }
    Ok(out)
}

fn covers(pre: &[NatRule], out: &[NatRule], m: &Mapping, family: Family) -> bool {
    #[cfg(test)]
    RULES_SCANNED.with(|c| c.set(c.get() + pre.len() as u64 + out.len() as u64));
    let label = m.label();
    pre.iter()
        .chain(out)
        .any(|r| r.comment == label && r.family.is_none_or(|f| f == family))
}

#[cfg(test)]
thread_local! {
    /// Rules `covers` looked at on this thread.
    static RULES_SCANNED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, item: T) {
    if !v.contains(&item) {
        v.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{Protocol, ProxyProtocol, Target};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::num::NonZeroU16;

    struct FakeHost;
    impl HostView for FakeHost {
        fn resolve(&self, name: &str) -> std::io::Result<Vec<IpAddr>> {
            match name {
                "dual.lan" => Ok(vec![
                    "10.0.0.5".parse().unwrap(),
                    "fd00::5".parse().unwrap(),
                ]),
                "v4.lan" => Ok(vec!["10.0.0.6".parse().unwrap()]),
                "zero.lan" => Ok(vec!["0.0.0.0".parse().unwrap()]),
                "group.lan" => Ok(vec![
                    "10.0.0.7".parse().unwrap(),
                    "224.0.0.1".parse().unwrap(),
                ]),
                "all.lan" => Ok(vec!["255.255.255.255".parse().unwrap()]),
                "mapped.lan" => Ok(vec!["::ffff:255.255.255.255".parse().unwrap()]),
                "any6.lan" => Ok(vec!["::".parse().unwrap()]),
                _ => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such host",
                )),
            }
        }
        fn is_local(&self, ip: IpAddr) -> bool {
            ip == IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))
        }
    }

    fn port(p: u16) -> NonZeroU16 {
        NonZeroU16::new(p).unwrap()
    }

    fn mapping(listen: Option<IpAddr>, lport: u16, host: TargetHost, tport: u16) -> Mapping {
        Mapping {
            index: 0,
            name: Some("web".into()),
            listen: Listen {
                addr: listen,
                port: port(lport),
            },
            target: Target {
                host,
                port: port(tport),
            },
            protocol: Protocol::Tcp,
            proxy_protocol: ProxyProtocol::Off,
        }
    }

    #[test]
    fn local_target_redirects_both_families_on_both_hooks() {
        let p = plan(&[mapping(None, 80, TargetHost::Local, 8080)], &FakeHost).unwrap();
        assert_eq!(p.rules.nat.len(), 2);
        assert_eq!(p.rules.nat[0].hook, Hook::Prerouting);
        assert_eq!(p.rules.nat[1].hook, Hook::Output);
        for r in &p.rules.nat {
            assert_eq!(r.family, None);
            assert_eq!(r.daddr, None);
            assert_eq!(r.dport, 80);
            assert_eq!(r.action, NatAction::Redirect { port: 8080 });
            assert_eq!(r.comment, "web");
        }
        assert!(p.sysctls.is_empty());
        assert!(!p.rules.loopback_guard);
        assert!(p.rules.masquerade.is_empty());
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn loopback_target_needs_route_localnet_and_guard_and_warns_about_v6() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let p = plan(&[mapping(None, 80, TargetHost::Ip(lo), 8080)], &FakeHost).unwrap();
        assert_eq!(p.sysctls, vec![Sysctl::RouteLocalnet]);
        assert!(p.rules.loopback_guard);
        assert!(p.rules.nat.iter().all(|r| r.family == Some(Family::V4)
            && r.action
                == NatAction::Dnat {
                    addr: lo,
                    port: 8080
                }));
        assert_eq!(p.rules.nat.len(), 2);
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].contains("ipv6 clients are not mapped"));
    }

    #[test]
    fn v6_loopback_target_serves_local_clients_only() {
        let lo = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let m = mapping(
            Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            443,
            TargetHost::Ip(lo),
            8443,
        );
        let p = plan(&[m], &FakeHost).unwrap();
        assert_eq!(p.rules.nat.len(), 1);
        assert_eq!(p.rules.nat[0].hook, Hook::Output);
        assert_eq!(p.rules.nat[0].daddr, None, "[::] matches every v6 address");
        assert!(p.warnings[0].contains("route_localnet"));
    }

    #[test]
    fn remote_target_needs_forwarding_and_masquerade() {
        let m = mapping(None, 80, TargetHost::Name("dual.lan".into()), 8080);
        let p = plan(&[m], &FakeHost).unwrap();
        assert_eq!(
            p.sysctls,
            vec![
                Sysctl::RouteLocalnet,
                Sysctl::Ipv4Forward,
                Sysctl::Ipv6Forward
            ]
        );
        assert!(p.rules.loopback_guard);
        assert_eq!(p.rules.masquerade.len(), 2);
        assert_eq!(p.rules.nat.len(), 4);
        assert!(p.warnings.is_empty());
    }

    #[test]
    fn target_that_is_a_local_address_needs_no_forwarding() {
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let m = mapping(Some(ip), 80, TargetHost::Ip(ip), 8080);
        let p = plan(&[m], &FakeHost).unwrap();
        assert!(p.sysctls.is_empty());
        assert!(p.rules.masquerade.is_empty());
        assert!(p.rules.nat.iter().all(|r| r.daddr == Some(ip)));
    }

    #[test]
    fn explicit_listen_address_is_matched_and_sets_family() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let p = plan(&[mapping(Some(ip), 80, TargetHost::Local, 8080)], &FakeHost).unwrap();
        assert!(p
            .rules
            .nat
            .iter()
            .all(|r| r.daddr == Some(ip) && r.family == Some(Family::V6)));
    }

    #[test]
    fn v6_listener_with_v4_only_target_is_an_error() {
        let m = mapping(
            Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            80,
            TargetHost::Name("v4.lan".into()),
            8080,
        );
        let err = plan(&[m], &FakeHost).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("mapping #1 \"web\""), "{msg}");
        assert!(msg.contains("use `lowport proxy`"), "{msg}");
    }

    #[test]
    fn planning_looks_at_each_rule_a_bounded_number_of_times() {
        let n: u16 = 5000;
        let mappings: Vec<Mapping> = (1..=n)
            .map(|i| {
                let ip = Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1);
                let mut m = mapping(None, i, TargetHost::Ip(IpAddr::V4(ip)), 8080);
                m.index = usize::from(i) - 1;
                m
            })
            .collect();
        RULES_SCANNED.with(|c| c.set(0));
        let p = plan(&mappings, &FakeHost).unwrap();
        assert_eq!(p.rules.masquerade.len(), usize::from(n));
        let scanned = RULES_SCANNED.with(|c| c.get());
        assert!(
            scanned <= 10 * u64::from(n),
            "{scanned} rules scanned for {n} mappings"
        );
    }

    #[test]
    fn unresolvable_name_names_the_host() {
        let m = mapping(None, 80, TargetHost::Name("nowhere.invalid".into()), 8080);
        let msg = plan(&[m], &FakeHost).unwrap_err().to_string();
        assert!(msg.contains("\"nowhere.invalid\""), "{msg}");
    }

    #[test]
    fn names_that_resolve_to_unusable_addresses_are_refused() {
        for (name, addr) in [
            ("zero.lan", "0.0.0.0"),
            ("group.lan", "224.0.0.1"),
            ("all.lan", "255.255.255.255"),
            ("mapped.lan", "::ffff:255.255.255.255"),
            ("any6.lan", "::"),
        ] {
            let m = mapping(None, 80, TargetHost::Name(name.into()), 8080);
            let msg = match plan(&[m], &FakeHost) {
                Ok(p) => panic!("{name}: planned {:?}", p.rules),
                Err(e) => e.to_string(),
            };
            assert!(
                msg.contains(&format!("\"{name}\" resolves to {addr}")),
                "{msg}"
            );
        }
    }

    #[test]
    fn both_protocols_give_one_rule_each() {
        let mut m = mapping(None, 443, TargetHost::Local, 8443);
        m.protocol = Protocol::Both;
        let p = plan(&[m], &FakeHost).unwrap();
        let l4s: Vec<L4> = p.rules.on(Hook::Prerouting).map(|r| r.l4).collect();
        assert_eq!(l4s, vec![L4::Tcp, L4::Udp]);
    }

    #[test]
    fn prerouting_rules_come_before_output_rules() {
        let a = mapping(None, 80, TargetHost::Local, 8080);
        let mut b = mapping(None, 443, TargetHost::Local, 8443);
        b.index = 1;
        let p = plan(&[a, b], &FakeHost).unwrap();
        let hooks: Vec<Hook> = p.rules.nat.iter().map(|r| r.hook).collect();
        assert_eq!(
            hooks,
            vec![
                Hook::Prerouting,
                Hook::Prerouting,
                Hook::Output,
                Hook::Output
            ]
        );
    }

    #[test]
    fn nat_chains_run_before_other_tools_and_the_guard_before_conntrack() {
        // Lower priorities run first, and the first NAT rule that matches
        // wins. The kernel's and other tools' chains, with lowport's:
        let in_hook_order = [
            ("lowport's loopback guard", GUARD_PRIORITY),
            ("conntrack", -200),
            ("lowport's DNAT", NAT_PRIORITY),
            ("dstnat: Docker, kube-proxy, netavark", -100),
            ("firewalld", -90),
            ("lowport's masquerade", SNAT_PRIORITY),
            ("srcnat", 100),
        ];
        for w in in_hook_order.windows(2) {
            assert!(w[0].1 < w[1].1, "{:?} must run before {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn rules_on_a_hook_are_that_hooks_only() {
        let mut m = mapping(None, 443, TargetHost::Local, 8443);
        m.protocol = Protocol::Both;
        let p = plan(&[m], &FakeHost).unwrap();
        for hook in [Hook::Prerouting, Hook::Output] {
            let on: Vec<&NatRule> = p.rules.on(hook).collect();
            assert_eq!(on.len(), 2, "{hook:?}: {on:?}");
            assert!(on.iter().all(|r| r.hook == hook), "{hook:?}: {on:?}");
        }
    }

    #[test]
    fn sysctls_are_the_kernels_files_and_only_forwarding_needs_consent() {
        for (s, path, forwarding) in [
            (
                Sysctl::RouteLocalnet,
                "/proc/sys/net/ipv4/conf/all/route_localnet",
                false,
            ),
            (Sysctl::Ipv4Forward, "/proc/sys/net/ipv4/ip_forward", true),
            (
                Sysctl::Ipv6Forward,
                "/proc/sys/net/ipv6/conf/all/forwarding",
                true,
            ),
        ] {
            assert_eq!(s.path(), path);
            // Messages name it as `sysctl` spells it.
            let dotted = path["/proc/sys/".len()..].replace('/', ".");
            assert_eq!(s.to_string(), dotted);
            assert_eq!(s.is_forwarding(), forwarding, "{s}");
        }
    }

    #[test]
    fn messages_name_the_family() {
        let m = mapping(
            Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            80,
            TargetHost::Ip("fd00::5".parse().unwrap()),
            8080,
        );
        let msg = plan(&[m], &FakeHost).unwrap_err().to_string();
        assert!(msg.contains("ipv4 only"), "{msg}");
        assert!(msg.contains("no ipv4 address"), "{msg}");
    }
}

//! The closing line of `lowport check`: the simplest way to serve these
//! mappings on this host, given what was found.

use super::report::{Finding, Mode, Status};
use crate::config::Config;
use crate::mapping::ProxyProtocol;

pub(super) fn recommend(
    config: &Config,
    mode: Mode,
    findings: &[Finding],
    unprivileged_ok: bool,
    cap_ok: bool,
    backend: &str,
    apply: &str,
) -> String {
    let ports: Vec<String> = {
        let mut p: Vec<u16> = config
            .mappings
            .iter()
            .map(|m| m.listen.port.get())
            .collect();
        p.sort();
        p.dedup();
        p.iter().map(u16::to_string).collect()
    };
    let ports = ports.join(",");
    let blocked = |topic: &str| {
        findings
            .iter()
            .any(|x| x.topic == topic && x.status != Status::Ok && x.fix.is_some())
    };
    if unprivileged_ok {
        return format!(
            "simplest here: let the web server listen on {ports} itself — unprivileged users may already bind them"
        );
    }
    if config
        .mappings
        .iter()
        .any(|m| m.proxy_protocol != ProxyProtocol::Off)
    {
        let cap = if cap_ok {
            ""
        } else {
            "sudo setcap cap_net_bind_service=+ep $(command -v lowport); "
        };
        return format!("simplest here: {cap}lowport proxy — a PROXY protocol header needs the proxy; kernel NAT cannot add one");
    }
    if blocked("nat")
        && findings
            .iter()
            .any(|x| x.topic == "nat" && x.status == Status::Problem)
    {
        return format!("simplest here: first remove the other NAT rule that claims the port (see ✗ nat above); then {apply}");
    }
    match mode {
        Mode::Rules if !findings.iter().any(|x| x.status == Status::Problem) => format!(
            "simplest here: keep rules mode ({backend}); enable lowport-rules.service so the rules come back after a reboot or an nftables reload"
        ),
        Mode::Proxy => "simplest here: keep the proxy; it holds no capability once its ports are bound".into(),
        _ => {
            let extra = if blocked("input") { ", and allow the translated ports in the input firewall (see ✗ input above)" } else { "" };
            format!("simplest here: {apply} ({backend}) — one-shot kernel NAT, nothing keeps running{extra}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::testutil::*;

    const APPLY: &str = "sudo lowport rules apply";

    fn recommend_for(
        specs: &[&str],
        mode: Mode,
        findings: &[Finding],
        unprivileged_ok: bool,
        cap_ok: bool,
    ) -> String {
        recommend(
            &config(specs),
            mode,
            findings,
            unprivileged_ok,
            cap_ok,
            "nftables",
            APPLY,
        )
    }

    #[test]
    fn recommendation_follows_the_host() {
        // Unprivileged ports: nothing needed at all, whatever else is found.
        let problem = [finding(Status::Problem, "rules", Some(APPLY))];
        assert_eq!(
            recommend_for(&["443:8443", "80:8080", "80:8081/udp"], Mode::Rules, &problem, true, false),
            "simplest here: let the web server listen on 80,443 itself — unprivileged users may already bind them"
        );
        // A PROXY protocol header needs the proxy, and the proxy the capability.
        let mut cfg = config(&["80:8080"]);
        cfg.mappings[0].proxy_protocol = ProxyProtocol::V1;
        let pp = |cap_ok| recommend(&cfg, Mode::Rules, &[], false, cap_ok, "nftables", APPLY);
        assert_eq!(
            pp(true),
            "simplest here: lowport proxy — a PROXY protocol header needs the proxy; kernel NAT cannot add one"
        );
        assert_eq!(
            pp(false),
            "simplest here: sudo setcap cap_net_bind_service=+ep $(command -v lowport); lowport proxy — a PROXY protocol header needs the proxy; kernel NAT cannot add one"
        );
        // Rules mode, all well: keep it.
        let ok = [finding(Status::Ok, "rules", None)];
        let keep = "simplest here: keep rules mode (nftables); enable lowport-rules.service so the rules come back after a reboot or an nftables reload";
        assert_eq!(
            recommend_for(&["80:8080"], Mode::Rules, &ok, false, true),
            keep
        );
        let warned = [
            finding(Status::Warning, "nat", Some("x")),
            finding(Status::Warning, "input", Some("y")),
        ];
        assert_eq!(
            recommend_for(&["80:8080"], Mode::Rules, &warned, false, true),
            keep
        );
        // Proxy mode: keep it.
        assert_eq!(
            recommend_for(&["80:8080"], Mode::Proxy, &problem, false, false),
            "simplest here: keep the proxy; it holds no capability once its ports are bound"
        );
        // Otherwise: apply the rules.
        let apply = "simplest here: sudo lowport rules apply (nftables) — one-shot kernel NAT, nothing keeps running";
        assert_eq!(
            recommend_for(&["80:8080"], Mode::Rules, &problem, false, true),
            apply
        );
        assert_eq!(
            recommend_for(&["80:8080"], Mode::None, &ok, false, true),
            apply
        );
    }

    #[test]
    fn recommendation_names_what_stands_in_the_way() {
        let rec =
            |mode, findings: &[Finding]| recommend_for(&["80:8080"], mode, findings, false, true);
        // Another NAT rule that wins: remove it first.
        let nat_problem = [
            finding(Status::Ok, "rules", None),
            finding(Status::Problem, "nat", Some("remove")),
        ];
        let first = "simplest here: first remove the other NAT rule that claims the port (see ✗ nat above); then sudo lowport rules apply";
        assert_eq!(rec(Mode::Rules, &nat_problem), first);
        assert_eq!(rec(Mode::None, &nat_problem), first);
        // Not when it only warns, or names no fix.
        let nat_warning = [
            finding(Status::Warning, "nat", Some("remove")),
            finding(Status::Problem, "rules", None),
        ];
        assert!(
            rec(Mode::None, &nat_warning).starts_with("simplest here: sudo lowport rules apply")
        );
        let no_fix = [finding(Status::Problem, "nat", None)];
        assert!(rec(Mode::None, &no_fix).starts_with("simplest here: sudo lowport rules apply"));
        let other_topic = [finding(Status::Problem, "target", Some("start it"))];
        assert!(
            rec(Mode::None, &other_topic).starts_with("simplest here: sudo lowport rules apply")
        );
        // An input firewall that drops the translated port: say so.
        let extra = "simplest here: sudo lowport rules apply (nftables) — one-shot kernel NAT, nothing keeps running, and allow the translated ports in the input firewall (see ✗ input above)";
        assert_eq!(
            rec(
                Mode::None,
                &[finding(Status::Problem, "input", Some("nft insert"))]
            ),
            extra
        );
        assert_eq!(
            rec(
                Mode::None,
                &[finding(Status::Warning, "input", Some("nft insert"))]
            ),
            extra
        );
        let plain = "simplest here: sudo lowport rules apply (nftables) — one-shot kernel NAT, nothing keeps running";
        assert_eq!(
            rec(Mode::None, &[finding(Status::Ok, "input", Some("x"))]),
            plain
        );
        assert_eq!(
            rec(Mode::None, &[finding(Status::Warning, "input", None)]),
            plain
        );
        assert_eq!(
            rec(Mode::None, &[finding(Status::Warning, "nat", Some("x"))]),
            plain
        );
    }
}

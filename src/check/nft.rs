//! Reading other nftables rules (`nft -j list ruleset`) for a packet we
//! only partly know: which rules match it, and what a chain decides.

use std::process::Command;

use serde_json::Value;

use crate::firewall;
use crate::mapping::L4;

pub(super) fn nft_ruleset() -> Option<Value> {
    let out = Command::new(firewall::system_program("nft"))
        .args(["-j", "list", "ruleset"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Three-valued result of matching a rule against a packet we only partly
/// know (no addresses, no interface but "not lo").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tri {
    Yes,
    No,
    Maybe,
}

/// The packet a firewall sees for one mapping.
#[derive(Debug, Clone, Copy)]
pub(super) struct Packet {
    pub(super) l4: L4,
    /// Destination port as the filter sees it (translated).
    pub(super) dport: u16,
    /// Destination port the client sent to.
    pub(super) orig_dport: u16,
}

pub(super) fn value_has_port(v: &Value, port: u16) -> Option<bool> {
    match v {
        Value::Number(n) => Some(n.as_u64() == Some(u64::from(port))),
        Value::Object(o) => {
            if let Some(set) = o.get("set") {
                let items = set.as_array()?;
                let mut any = false;
                for i in items {
                    any |= value_has_port(i, port)?;
                }
                Some(any)
            } else if let Some(r) = o.get("range") {
                let r = r.as_array()?;
                let (lo, hi) = (r.first()?.as_u64()?, r.get(1)?.as_u64()?);
                Some((lo..=hi).contains(&u64::from(port)))
            } else {
                None
            }
        }
        Value::Array(items) => {
            let mut any = false;
            for i in items {
                any |= value_has_port(i, port)?;
            }
            Some(any)
        }
        _ => None,
    }
}

pub(super) fn value_has_str(v: &Value, s: &str) -> Option<bool> {
    match v {
        Value::String(x) => Some(x == s),
        Value::Array(items) => Some(items.iter().any(|i| i.as_str() == Some(s))),
        Value::Object(o) => o.get("set").and_then(|x| value_has_str(x, s)),
        _ => None,
    }
}

/// Match one nft JSON `match` expression against the packet.
pub(super) fn nft_match(m: &Value, p: &Packet) -> Tri {
    let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
    let (Some(left), Some(right)) = (m.get("left"), m.get("right")) else {
        return Tri::Maybe;
    };
    let hit: Option<bool> = if let Some(pl) = left.get("payload") {
        let proto = pl.get("protocol").and_then(Value::as_str).unwrap_or("");
        let field = pl.get("field").and_then(Value::as_str).unwrap_or("");
        let proto_ok = match proto {
            "tcp" => p.l4 == L4::Tcp,
            "udp" => p.l4 == L4::Udp,
            "th" => true,
            _ => return Tri::Maybe,
        };
        if !proto_ok {
            // `tcp dport 80` never matches a UDP packet, whatever the op.
            return Tri::No;
        }
        match field {
            "dport" => value_has_port(right, p.dport),
            _ => None,
        }
    } else if let Some(meta) = left.get("meta") {
        match meta.get("key").and_then(Value::as_str) {
            Some("l4proto") => value_has_str(right, &p.l4.to_string()),
            Some("iifname" | "iif") => {
                // The client is not on lo; any other interface may be it.
                if value_has_str(right, "lo") == Some(true) {
                    Some(false)
                } else {
                    None
                }
            }
            _ => None,
        }
    } else if let Some(ct) = left.get("ct") {
        match (
            ct.get("key").and_then(Value::as_str),
            ct.get("dir").and_then(Value::as_str),
        ) {
            (Some("proto-dst"), Some("original")) => value_has_port(right, p.orig_dport),
            (Some("state"), _) => value_has_str(right, "new"),
            (Some("status"), _) => value_has_str(right, "dnat"),
            _ => None,
        }
    } else {
        None
    };
    match (hit, op) {
        (None, _) => Tri::Maybe,
        (Some(h), "!=") => {
            if h {
                Tri::No
            } else {
                Tri::Yes
            }
        }
        (Some(h), _) => {
            if h {
                Tri::Yes
            } else {
                Tri::No
            }
        }
    }
}

/// The verdict of a chain (and the chains it jumps to) for a packet:
/// `Some(true)` accepted, `Some(false)` dropped, `None` falls through.
/// A rule that only maybe matches may accept (benefit of the doubt) but is
/// never taken to drop.
pub(super) fn nft_chain_verdict(
    rs: &NftRules,
    table: (&str, &str),
    chain: &str,
    p: &Packet,
    depth: u8,
) -> Option<bool> {
    if depth > 8 {
        return None;
    }
    for rule in rs.rules(table, chain) {
        let mut m = Tri::Yes;
        for e in rule {
            if let Some(mm) = e.get("match") {
                match nft_match(mm, p) {
                    Tri::No => {
                        m = Tri::No;
                        break;
                    }
                    Tri::Maybe => m = Tri::Maybe,
                    Tri::Yes => {}
                }
            } else if e
                .get("xt")
                .is_some_and(|x| x.get("type").and_then(Value::as_str) == Some("match"))
            {
                m = Tri::Maybe;
            }
        }
        if m == Tri::No {
            continue;
        }
        for e in rule {
            if e.get("accept").is_some() {
                return Some(true);
            }
            if (e.get("drop").is_some() || e.get("reject").is_some()) && m == Tri::Yes {
                return Some(false);
            }
            if let Some(target) = e
                .get("jump")
                .or_else(|| e.get("goto"))
                .and_then(|j| j.get("target"))
                .and_then(Value::as_str)
            {
                let v = nft_chain_verdict(rs, table, target, p, depth + 1);
                if v == Some(true) || (v == Some(false) && m == Tri::Yes) {
                    return v;
                }
            }
        }
    }
    None
}

/// `nft -j list ruleset`, indexed.
pub(super) struct NftRules<'a> {
    pub(super) chains: Vec<&'a serde_json::Map<String, Value>>,
    pub(super) rules: Vec<&'a serde_json::Map<String, Value>>,
}

impl<'a> NftRules<'a> {
    pub(super) fn new(v: &'a Value) -> Self {
        let items = v.get("nftables").and_then(Value::as_array);
        let of = |kind: &str| -> Vec<&'a serde_json::Map<String, Value>> {
            items
                .into_iter()
                .flatten()
                .filter_map(|i| i.get(kind).and_then(Value::as_object))
                .collect()
        };
        NftRules {
            chains: of("chain"),
            rules: of("rule"),
        }
    }

    pub(super) fn rules(&self, (family, table): (&str, &str), chain: &str) -> Vec<&'a Vec<Value>> {
        self.rules
            .iter()
            .filter(|r| {
                s(r, "family") == family && s(r, "table") == table && s(r, "chain") == chain
            })
            .filter_map(|r| r.get("expr").and_then(Value::as_array))
            .collect()
    }
}

pub(super) fn s<'a>(o: &'a serde_json::Map<String, Value>, key: &str) -> &'a str {
    o.get(key).and_then(Value::as_str).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_matches_ports_sets_and_ct_original() {
        let p = Packet {
            l4: L4::Tcp,
            dport: 8080,
            orig_dport: 80,
        };
        let m: Value = serde_json::json!({"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":{"set":[22,{"range":[8000,8100]}]}});
        assert_eq!(nft_match(&m, &p), Tri::Yes);
        let m: Value = serde_json::json!({"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":80});
        assert_eq!(nft_match(&m, &p), Tri::No, "the filter sees 8080, not 80");
        let m: Value = serde_json::json!({"op":"==","left":{"ct":{"key":"proto-dst","dir":"original"}},"right":80});
        assert_eq!(nft_match(&m, &p), Tri::Yes);
        let m: Value = serde_json::json!({"op":"in","left":{"ct":{"key":"state"}},"right":["established","related"]});
        assert_eq!(nft_match(&m, &p), Tri::No);
        let m: Value = serde_json::json!({"op":"==","left":{"payload":{"protocol":"udp","field":"dport"}},"right":8080});
        assert_eq!(nft_match(&m, &p), Tri::No);
    }
}

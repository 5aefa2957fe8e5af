//! Test helpers shared by the check modules: rulesets in `nft -j list
//! ruleset` form, configurations from `-m` specs, findings.

use serde_json::{json, Value};

use super::report::{Finding, Status};
use crate::config::Config;

/// A ruleset being built: tables, chains and rules in `nft -j list
/// ruleset` form.
#[derive(Default)]
pub(super) struct Nft {
    items: Vec<Value>,
    handle: u64,
}

impl Nft {
    /// A base chain: `type TYPE hook HOOK priority PRIO; policy POLICY;`.
    pub(super) fn base(
        mut self,
        (family, table): (&str, &str),
        name: &str,
        (kind, hook, prio, policy): (&str, &str, i64, &str),
    ) -> Self {
        self.handle += 1;
        self.items.push(
            json!({"chain": {"family": family, "table": table, "name": name,
            "handle": self.handle, "type": kind, "hook": hook, "prio": prio, "policy": policy}}),
        );
        self
    }
    /// A regular chain (a jump target).
    pub(super) fn chain(mut self, (family, table): (&str, &str), name: &str) -> Self {
        self.handle += 1;
        self.items.push(
            json!({"chain": {"family": family, "table": table, "name": name,
            "handle": self.handle}}),
        );
        self
    }
    pub(super) fn rule(
        mut self,
        (family, table): (&str, &str),
        chain: &str,
        expr: Vec<Value>,
    ) -> Self {
        self.handle += 1;
        self.items.push(
            json!({"rule": {"family": family, "table": table, "chain": chain,
            "handle": self.handle, "expr": expr}}),
        );
        self
    }
    pub(super) fn json(self) -> Value {
        let mut items = vec![json!({"metainfo": {"json_schema_version": 1}})];
        items.extend(self.items);
        json!({ "nftables": items })
    }
}

pub(super) const FILTER: (&str, &str) = ("inet", "filter");

pub(super) fn payload(proto: &str, field: &str, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": {"payload": {"protocol": proto, "field": field}}, "right": right}})
}

/// `tcp dport 8080` and the like.
pub(super) fn dport(proto: &str, right: Value) -> Value {
    payload(proto, "dport", "==", right)
}

/// `ct original proto-dst 80`.
pub(super) fn ct_orig_dport(port: u16) -> Value {
    json!({"match": {"op": "==", "left": {"ct": {"key": "proto-dst", "dir": "original"}}, "right": port}})
}

pub(super) fn ct(key: &str, op: &str, right: Value) -> Value {
    json!({"match": {"op": op, "left": {"ct": {"key": key}}, "right": right}})
}

pub(super) fn meta(key: &str, right: Value) -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": right}})
}

pub(super) fn verdict(v: &str) -> Value {
    json!({ v: null })
}

pub(super) fn jump(kind: &str, target: &str) -> Value {
    json!({ kind: {"target": target} })
}

pub(super) fn config(specs: &[&str]) -> Config {
    Config {
        mappings: specs
            .iter()
            .enumerate()
            .map(|(i, s)| crate::config::parse_spec(s, i).unwrap())
            .collect(),
        ..Config::default()
    }
}

pub(super) fn finding(status: Status, topic: &'static str, fix: Option<&str>) -> Finding {
    Finding {
        status,
        topic,
        message: "m".into(),
        fix: fix.map(str::to_owned),
    }
}

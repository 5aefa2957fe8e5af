//! The only module that knows YAML: parse `lowport.yaml` and `-m` specs, then
//! validate them into [`Mapping`]s and typed settings.
//!
//! Parsing happens in two steps so that every error can name the file, the
//! mapping (index and name) and the bad value: the document is read as a
//! YAML tree first (syntax errors carry line and column), then each mapping
//! is decoded and validated on its own.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::{NonZeroU16, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use crate::mapping::{Listen, Mapping, Protocol, ProxyProtocol, Target, TargetHost};

mod read;
mod settings;
mod spec;
pub use read::*;
pub use settings::*;
pub use spec::*;

/// Where the configuration comes from when neither `-c` nor `-m` is given.
pub const DEFAULT_CONFIG: &str = "/etc/lowport/lowport.yaml";
/// The largest config file lowport reads (a thousand mappings are 100 KB).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// The deepest `[ ]`/`{ }` nesting lowport parses.
pub const MAX_FLOW_DEPTH: usize = 64;

#[cfg(test)]
thread_local! {
    /// How many pairs of listens were compared on this thread.
    static OVERLAP_CHECKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Proxy-mode settings (`proxy:` section), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// At most this many client connections at once; accepting pauses above it.
    pub max_connections: NonZeroUsize,
    /// At most this many of them from one client address (IPv6: one /64);
    /// above it a new connection is reset at once.
    pub max_connections_per_client: NonZeroUsize,
    /// For the backend name's lookup, then for each resolved address.
    pub connect_timeout: Duration,
    /// Close a connection when neither side sent anything for this long.
    pub idle_timeout: Duration,
    /// How long a half-closed connection may stay silent.
    pub fin_timeout: Duration,
    /// On SIGTERM/SIGINT: how long live connections may finish.
    pub shutdown_timeout: Duration,
    /// When started as root: the user to switch to after binding.
    pub user: String,
    /// End a UDP flow when no datagram went either way for this long.
    pub udp_idle_timeout: Duration,
    /// At most this many UDP flows at once; datagrams from new clients are
    /// dropped above it.
    pub udp_max_flows: NonZeroUsize,
    /// SO_RCVBUF asked for each UDP listening socket, in bytes: what a
    /// burst of datagrams can fill before the kernel drops them.
    pub udp_receive_buffer: usize,
}

/// Default `udp_idle_timeout`: longer than the kernel's conntrack timeout
/// for a UDP stream (120 s), which QUIC keep-alives are tuned to beat.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest `udp_idle_timeout`: a flow holds a socket all that time.
pub const MAX_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Default `udp_max_flows`.
pub const DEFAULT_UDP_MAX_FLOWS: usize = 16384;
/// Largest `udp_max_flows`: each flow is a socket, and no process gets more
/// file descriptors than `fs.nr_open` (1,048,576 by default).
pub const MAX_UDP_MAX_FLOWS: usize = 1 << 20;
/// Default `udp_receive_buffer`: 4 MiB, about 3,500 QUIC-sized datagrams or
/// 0.17 s of 20,000 datagrams/s; rmem_default (208 KiB) drops in bursts.
pub const DEFAULT_UDP_RECEIVE_BUFFER: usize = 4 << 20;
/// `udp_receive_buffer` limits: the kernel's smallest receive buffer is
/// a few KiB, and it doubles the value asked for in an int.
pub const MIN_UDP_RECEIVE_BUFFER: usize = 4 << 10;
pub const MAX_UDP_RECEIVE_BUFFER: usize = 1 << 30;

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            max_connections: NonZeroUsize::new(4096).expect("non-zero"),
            max_connections_per_client: NonZeroUsize::new(512).expect("non-zero"),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            fin_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            user: "nobody".to_owned(),
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            udp_max_flows: NonZeroUsize::new(DEFAULT_UDP_MAX_FLOWS).expect("non-zero"),
            udp_receive_buffer: DEFAULT_UDP_RECEIVE_BUFFER,
        }
    }
}

/// Which firewall backend `rules` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    #[default]
    Auto,
    Nftables,
    Iptables,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "nftables" | "nft" => Ok(BackendChoice::Nftables),
            "iptables" => Ok(BackendChoice::Iptables),
            other => Err(format!(
                "unknown backend {other:?}; valid: auto, nftables, iptables"
            )),
        }
    }
}

/// Rules-mode settings (`rules:` section).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RulesSettings {
    pub backend: BackendChoice,
    /// May lowport turn on IP forwarding for remote targets?
    pub enable_forwarding: bool,
}

/// A whole validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub mappings: Vec<Mapping>,
    pub proxy: ProxySettings,
    pub rules: RulesSettings,
}

/// Where to read the configuration from, as the command line said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Source {
    /// `-c FILE`.
    pub file: Option<PathBuf>,
    /// `-m SPEC`, in order.
    pub specs: Vec<String>,
}

impl Source {
    /// The file that will be read: `-c`, or the default when no `-m` is given.
    pub fn effective_file(&self) -> Option<PathBuf> {
        match (&self.file, self.specs.is_empty()) {
            (Some(f), _) => Some(f.clone()),
            (None, true) => Some(PathBuf::from(DEFAULT_CONFIG)),
            (None, false) => None,
        }
    }
}

/// A configuration error: where it is, and what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}{hint}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("{} is {why}; lowport runs as root and will not read a file another user can change: `chown root: {} && chmod go-w {}` (and the same for the directory)", path.display(), path.display(), path.display())]
    Unsafe { path: PathBuf, why: String },
    #[error("{}: {}", path.display(), syntax_message(error))]
    Syntax {
        path: PathBuf,
        error: serde_yaml::Error,
    },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

fn syntax_message(e: &serde_yaml::Error) -> String {
    if e.to_string().starts_with("recursion limit exceeded") {
        // serde_yaml's own limit on block nesting (`- - - -`).
        return "YAML nesting deeper than 128 levels, the most lowport reads (a config needs 3)"
            .to_owned();
    }
    match e.location() {
        Some(loc) => format!(
            "YAML syntax error at line {}, column {}: {}",
            loc.line(),
            loc.column(),
            strip_location(&e.to_string())
        ),
        None => format!("YAML error: {e}"),
    }
}

/// serde_yaml appends " at line L column C"; we print that first instead.
fn strip_location(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

/// Read and validate the configuration that `source` names.
pub fn load(source: &Source) -> Result<Config, ConfigError> {
    load_with(source, read_file)
}

/// [`load`], reading the file with `read` (the capable binary reads only
/// files root controls: [`crate::privilege::read_root_controlled`]). A
/// file larger than the most lowport reads is refused whoever read it.
pub fn load_with<E: Into<ReadError>>(
    source: &Source,
    read: impl Fn(&Path) -> Result<String, E>,
) -> Result<Config, ConfigError> {
    let read = |path: &Path| -> Result<String, ReadError> {
        let text = read(path).map_err(Into::into)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(too_large());
        }
        Ok(text)
    };
    let mut config = match source.effective_file() {
        Some(path) => {
            let text = read(&path).map_err(|e| match e {
                ReadError::Io(e) => ConfigError::Read {
                    hint: if e.kind() == std::io::ErrorKind::NotFound && source.file.is_none() {
                        "; pass a file with -c FILE or mappings with -m 80:8080"
                    } else {
                        ""
                    },
                    path: path.clone(),
                    source: e,
                },
                ReadError::Unsafe { path, why } => ConfigError::Unsafe { path, why },
            })?;
            parse_str(&text, &path)?
        }
        None => Config::default(),
    };
    let mut seen = Seen::default();
    for (pos, m) in config.mappings.iter().enumerate() {
        seen.add(m, pos);
    }
    for spec in &source.specs {
        let index = config.mappings.len();
        let origin = format!("-m {spec}");
        let m = parse_spec(spec, index).map_err(|message| ConfigError::Invalid {
            origin: origin.clone(),
            message: format!("mapping #{}: {message}", index + 1),
        })?;
        seen.check(&config.mappings, &m)
            .map_err(|message| ConfigError::Invalid { origin, message })?;
        seen.add(&m, config.mappings.len());
        config.mappings.push(m);
    }
    if config.mappings.is_empty() {
        return Err(ConfigError::Invalid {
            origin: source
                .effective_file()
                .map_or_else(|| "command line".to_owned(), |p| p.display().to_string()),
            message: "no mappings: add at least one under `mappings:` (listen: 80, to: 8080) \
                      or pass -m 80:8080"
                .to_owned(),
        });
    }
    Ok(config)
}

// ---- The YAML shapes. Listen/to stay raw values so that `80` and "[::]:80"
// ---- are both accepted and every error can quote what was written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    mappings: Option<Vec<Value>>,
    // The sections stay raw here and are read one by one, so that an error
    // in one names it (`proxy: unknown field ...`) and comes in file order.
    #[serde(default)]
    proxy: Option<Value>,
    #[serde(default)]
    rules: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    name: Option<Value>,
    listen: Option<Value>,
    to: Option<Value>,
    protocol: Option<Value>,
    proxy_protocol: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    max_connections: Option<Value>,
    max_connections_per_client: Option<Value>,
    connect_timeout: Option<Value>,
    idle_timeout: Option<Value>,
    fin_timeout: Option<Value>,
    shutdown_timeout: Option<Value>,
    user: Option<Value>,
    udp_idle_timeout: Option<Value>,
    udp_max_flows: Option<Value>,
    udp_receive_buffer: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRules {
    backend: Option<Value>,
    enable_forwarding: Option<Value>,
}

/// Parse a YAML document (the contents of `path`).
pub fn parse_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        origin: path.display().to_string(),
        message,
    };
    let syntax = |error| ConfigError::Syntax {
        path: path.to_owned(),
        error,
    };
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(invalid(format!(
            "the file is larger than {MAX_FILE_BYTES} bytes, the most lowport reads"
        )));
    }
    // The YAML parser's time grows with the square of flow nesting
    // (`[[[[...`): refuse deep nesting before parsing.
    if let Some(line) = flow_nesting_beyond(text, MAX_FLOW_DEPTH) {
        return Err(invalid(format!(
            "line {line}: YAML nesting deeper than {MAX_FLOW_DEPTH} levels of [ ] and {{ }}, \
             the most lowport reads (a config needs 3)"
        )));
    }
    // A tree first: syntax errors keep their line and column.
    let tree: Value = serde_yaml::from_str(text).map_err(syntax)?;
    if tree.is_null() {
        return Err(invalid(
            "the file is empty; it needs a `mappings:` list (see rules/examples/)".to_owned(),
        ));
    }
    if !tree.is_mapping() {
        return Err(invalid(format!(
            "the top level must be a map with `mappings:`, `proxy:` and `rules:`, not {}",
            describe(&tree)
        )));
    }
    let raw: RawFile = serde_yaml::from_value(tree).map_err(|e| invalid(serde_message(&e)))?;

    let mut config = Config::default();
    let mut seen = Seen::default();
    for (index, value) in raw.mappings.unwrap_or_default().into_iter().enumerate() {
        let m = parse_mapping(value, index).map_err(&invalid)?;
        seen.check(&config.mappings, &m).map_err(&invalid)?;
        seen.add(&m, config.mappings.len());
        config.mappings.push(m);
    }
    if let Some(p) = section::<RawProxy>("proxy", raw.proxy).map_err(&invalid)? {
        config.proxy = parse_proxy(p).map_err(&invalid)?;
    }
    if let Some(r) = section::<RawRules>("rules", raw.rules).map_err(&invalid)? {
        config.rules = parse_rules(r).map_err(&invalid)?;
    }
    Ok(config)
}

/// Read the `name:` section; absent or empty is None.
fn section<T: serde::de::DeserializeOwned>(
    name: &str,
    value: Option<Value>,
) -> Result<Option<T>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) if !v.is_mapping() => Err(format!(
            "{name}: expected a map of settings, found {}",
            describe(&v)
        )),
        Some(v) => serde_yaml::from_value(v)
            .map(Some)
            .map_err(|e| format!("{name}: {}", serde_message(&e))),
    }
}

fn serde_message(e: &serde_yaml::Error) -> String {
    let msg = strip_location(&e.to_string()).to_owned();
    if msg.contains("unknown field") {
        format!("{msg}; remove or correct the key")
    } else {
        msg
    }
}

/// How a mapping is named in messages: `mapping #2 "web"`.
fn mapping_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("mapping #{} {n:?}", index + 1),
        None => format!("mapping #{}", index + 1),
    }
}

fn parse_mapping(value: Value, index: usize) -> Result<Mapping, String> {
    // Read the name before anything else, so every later error can carry it.
    let name_hint = value.get("name").and_then(Value::as_str).map(str::to_owned);
    let label = mapping_label(index, name_hint.as_deref());
    if !value.is_mapping() {
        return Err(format!(
            "{label}: expected a map with `listen:` and `to:`, found {}",
            describe(&value)
        ));
    }
    let raw: RawMapping = serde_yaml::from_value(value).map_err(|e| {
        let msg = serde_message(&e);
        format!("{label}: {msg}")
    })?;
    let name = match raw.name {
        None => None,
        Some(v) => Some(parse_name(&v).map_err(|m| format!("{label}: {m}"))?),
    };
    let listen_text = scalar_text(raw.listen.as_ref())
        .map_err(|m| format!("{label}: `listen` {m}; write a port (80) or \"ADDR:PORT\""))?;
    let listen =
        parse_listen(&listen_text).map_err(|m| format!("{label}: listen {listen_text:?}: {m}"))?;
    let to_text = scalar_text(raw.to.as_ref())
        .map_err(|m| format!("{label}: `to` {m}; write a port (8080) or \"HOST:PORT\""))?;
    let target = parse_target(&to_text).map_err(|m| format!("{label}: to {to_text:?}: {m}"))?;
    let protocol = match raw.protocol {
        None => Protocol::Tcp,
        Some(v) => parse_protocol(&value_text(&v))
            .map_err(|m| format!("{label}: protocol {:?} {m}", value_text(&v)))?,
    };
    let proxy_protocol = match raw.proxy_protocol {
        None => ProxyProtocol::Off,
        Some(Value::Bool(false)) => ProxyProtocol::Off,
        Some(v) => match value_text(&v).as_str() {
            "off" => ProxyProtocol::Off,
            "v1" => ProxyProtocol::V1,
            "v2" => ProxyProtocol::V2,
            other => {
                return Err(format!(
                    "{label}: proxy_protocol {other:?} is not valid; use off, v1 or v2"
                ))
            }
        },
    };
    Ok(Mapping {
        index,
        name,
        listen,
        target,
        protocol,
        proxy_protocol,
    })
}

fn parse_name(v: &Value) -> Result<String, String> {
    let Some(name) = v.as_str() else {
        return Err(format!("name must be text, found {}", describe(v)));
    };
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(ok_char) {
        return Err(format!(
            "name {name:?} is not valid; use 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(name.to_owned())
}

/// Text of a scalar that must be present (`listen`, `to`).
fn scalar_text(v: Option<&Value>) -> Result<String, String> {
    match v {
        None => Err("is missing".to_owned()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("must be a port or text, found {}", describe(other))),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => describe(other),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing (null)".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the text {s:?}"),
        Value::Sequence(_) => "a list".to_owned(),
        Value::Mapping(_) => "a map".to_owned(),
        Value::Tagged(_) => "a tagged value".to_owned(),
    }
}

/// Two listens overlap when a client packet could match both.
fn listens_overlap(a: &Listen, b: &Listen) -> bool {
    #[cfg(test)]
    OVERLAP_CHECKS.with(|c| c.set(c.get() + 1));
    if a.port != b.port {
        return false;
    }
    match (a.addr, b.addr) {
        (None, _) | (_, None) => true,
        (Some(x), Some(y)) if std::mem::discriminant(&x) != std::mem::discriminant(&y) => false,
        (Some(x), Some(y)) => x == y || x.is_unspecified() || y.is_unspecified(),
    }
}

/// The listens and names of the mappings read so far, indexed so that
/// each new mapping is checked against all of them in constant time (a
/// config of n mappings is validated in O(n), not O(n²)).
#[derive(Default)]
struct Seen {
    names: std::collections::HashMap<String, usize>,
    ports: std::collections::HashMap<(u16, crate::mapping::L4), PortSeen>,
}

/// Per port and protocol: the first mapping (its position) of each kind
/// of listen address. The first is the one an overlap is reported with,
/// as a pairwise check in file order would.
#[derive(Default)]
struct PortSeen {
    any: Option<usize>,
    both_families: Option<usize>,
    v4: Option<usize>,
    v6: Option<usize>,
    v4_unspecified: Option<usize>,
    v6_unspecified: Option<usize>,
    exact: std::collections::HashMap<IpAddr, usize>,
}

fn first(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        _ => a.or(b),
    }
}

impl Seen {
    fn add(&mut self, m: &Mapping, pos: usize) {
        if let Some(name) = &m.name {
            self.names.entry(name.clone()).or_insert(pos);
        }
        for l4 in m.protocol.l4s() {
            let p = self.ports.entry((m.listen.port.get(), l4)).or_default();
            let keep = |slot: &mut Option<usize>| {
                slot.get_or_insert(pos);
            };
            keep(&mut p.any);
            match m.listen.addr {
                None => keep(&mut p.both_families),
                Some(ip) => {
                    keep(if ip.is_ipv4() { &mut p.v4 } else { &mut p.v6 });
                    if ip.is_unspecified() {
                        keep(if ip.is_ipv4() {
                            &mut p.v4_unspecified
                        } else {
                            &mut p.v6_unspecified
                        });
                    }
                    p.exact.entry(ip).or_insert(pos);
                }
            }
        }
    }

    /// The first earlier mapping whose listen overlaps `m`'s.
    fn overlapping(&self, m: &Mapping) -> Option<usize> {
        let mut found = None;
        for l4 in m.protocol.l4s() {
            let Some(p) = self.ports.get(&(m.listen.port.get(), l4)) else {
                continue;
            };
            let here = match m.listen.addr {
                None => p.any,
                Some(ip) if ip.is_unspecified() => {
                    first(p.both_families, if ip.is_ipv4() { p.v4 } else { p.v6 })
                }
                Some(ip) => first(
                    first(
                        p.both_families,
                        if ip.is_ipv4() {
                            p.v4_unspecified
                        } else {
                            p.v6_unspecified
                        },
                    ),
                    p.exact.get(&ip).copied(),
                ),
            };
            found = first(found, here);
        }
        found
    }

    /// Does `m` overlap or share a name with a mapping in `existing` (the
    /// mappings added so far, by position)? The error names the first.
    fn check(&self, existing: &[Mapping], m: &Mapping) -> Result<(), String> {
        let overlap = self.overlapping(m).filter(|&i| {
            existing
                .get(i)
                .is_some_and(|o| listens_overlap(&m.listen, &o.listen))
        });
        let name = m.name.as_ref().and_then(|n| self.names.get(n).copied());
        match (overlap, name) {
            (Some(i), n) if n.is_none_or(|n| i <= n) => Err(overlap_message(m, &existing[i])),
            (_, Some(n)) => Err(name_message(m, &existing[n])),
            _ => Ok(()),
        }
    }
}

fn overlap_message(m: &Mapping, other: &Mapping) -> String {
    format!(
        "{}: listen {} ({}) overlaps {} (listen {}, {}); each address, port and protocol \
         can be mapped only once",
        mapping_label(m.index, m.name.as_deref()),
        m.listen,
        m.protocol,
        mapping_label(other.index, other.name.as_deref()),
        other.listen,
        other.protocol
    )
}

fn name_message(m: &Mapping, other: &Mapping) -> String {
    format!(
        "{}: the name is already used by mapping #{}; names must be unique",
        mapping_label(m.index, m.name.as_deref()),
        other.index + 1
    )
}

/// The quadratic pairwise check [`Seen`] replaced: kept to test that both
/// give the same answer.
#[cfg(test)]
fn check_conflicts(existing: &[Mapping], m: &Mapping) -> Result<(), String> {
    for other in existing {
        let proto_overlap = (m.protocol.has_tcp() && other.protocol.has_tcp())
            || (m.protocol.has_udp() && other.protocol.has_udp());
        if proto_overlap && listens_overlap(&m.listen, &other.listen) {
            return Err(overlap_message(m, other));
        }
        if m.name.is_some() && m.name == other.name {
            return Err(name_message(m, other));
        }
    }
    Ok(())
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Nftables => "nftables",
            BackendChoice::Iptables => "iptables",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, String> {
        parse_str(yaml, Path::new("test.yaml")).map_err(|e| e.to_string())
    }

    /// Names must be unique, and distinct names are fine (a comparison
    /// turned around would accept the one and refuse the other).
    #[test]
    fn duplicate_names_are_refused_and_distinct_ones_accepted() {
        let two = |a: &str, b: &str| {
            parse(&format!(
                "mappings:\n  - {{name: {a}, listen: 80, to: 8080}}\n  - {{name: {b}, listen: 81, to: 8081}}\n"
            ))
        };
        assert!(two("web", "api").is_ok());
        let err = two("web", "web").unwrap_err();
        assert!(err.contains("web"), "{err}");
    }

    /// Every protocol keyword parses to its own protocol.
    #[test]
    fn protocols_parse_to_themselves() {
        for (word, want) in [
            ("tcp", Protocol::Tcp),
            ("udp", Protocol::Udp),
            ("both", Protocol::Both),
        ] {
            let c = parse(&format!(
                "mappings:\n  - {{listen: 80, to: 8080, protocol: {word}}}\n"
            ))
            .unwrap();
            assert_eq!(c.mappings[0].protocol, want, "{word}");
        }
        assert!(parse("mappings:\n  - {listen: 80, to: 8080, protocol: sctp}\n").is_err());
    }

    /// A host name is letters, digits and inner hyphens in dot-separated
    /// labels of 1 to 63 characters; anything else is refused, not looked
    /// up.
    #[test]
    fn host_names_are_checked() {
        for good in ["backend", "backend.lan", "a-b.example", "x1"] {
            assert!(is_host_name(good), "{good}");
        }
        let long_label = "a".repeat(64);
        let long_name = ["a"; 128].join("."); // 255 characters, over 253
        for bad in [
            "",
            "bad_name",
            "-x",
            "x-",
            "a..b",
            "bad!",
            "1.2.3",
            "sp ace",
            long_label.as_str(),
            long_name.as_str(),
        ] {
            assert!(!is_host_name(bad), "{bad:?} taken for a host name");
        }
    }

    /// Mappings covering every kind of listen overlap: both families,
    /// each family's wildcard, exact addresses, names, both protocols.
    fn mixed_mappings() -> Vec<Mapping> {
        let addrs = [
            "",
            "0.0.0.0:",
            "[::]:",
            "10.0.0.1:",
            "10.0.0.2:",
            "[fd00::1]:",
        ];
        let mut out = Vec::new();
        let mut n = 0u32;
        for a in addrs {
            for port in [80, 443] {
                for proto in ["tcp", "udp", "both"] {
                    for name in [None, Some("web"), Some("other")] {
                        let spec = format!("{a}{port}:8080/{proto}");
                        let mut m = parse_spec(&spec, out.len()).unwrap();
                        m.name = name.map(|x| format!("{x}{}", n % 3));
                        n += 1;
                        out.push(m);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn indexed_conflicts_answer_as_the_pairwise_check_did() {
        let all = mixed_mappings();
        // Every ordered pair and triple prefix: the same verdict and the
        // same message as the pairwise check.
        for i in 0..all.len() {
            for j in 0..all.len() {
                for k in [None, Some((i + j) % all.len())] {
                    let mut existing = vec![all[i].clone()];
                    if let Some(k) = k {
                        existing.push(all[k].clone());
                    }
                    for (pos, m) in existing.iter_mut().enumerate() {
                        m.index = pos;
                    }
                    let mut m = all[j].clone();
                    m.index = existing.len();
                    let mut seen = Seen::default();
                    for (pos, e) in existing.iter().enumerate() {
                        seen.add(e, pos);
                    }
                    assert_eq!(
                        seen.check(&existing, &m),
                        check_conflicts(&existing, &m),
                        "{existing:?} + {m:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn validation_compares_each_mapping_with_a_bounded_number_of_others() {
        let n = 20_000;
        let mut yaml = String::from("mappings:\n");
        for i in 0..n {
            let port = 1 + i % 60_000;
            yaml.push_str(&format!(
                "  - {{name: m{i}, listen: \"10.{}.{}.1:{port}\", to: 8080}}\n",
                i / 256 % 256,
                i % 256
            ));
        }
        OVERLAP_CHECKS.with(|c| c.set(0));
        let c = parse(&yaml).unwrap();
        assert_eq!(c.mappings.len(), n as usize);
        let checks = OVERLAP_CHECKS.with(|c| c.get());
        assert!(
            checks <= 2 * n as u64,
            "{checks} comparisons for {n} mappings"
        );
    }

    #[test]
    fn deep_nesting_and_large_files_are_refused_naming_the_limit() {
        let deep = format!("mappings: {}{}\n", "[".repeat(20_000), "]".repeat(20_000));
        let msg = parse(&deep).unwrap_err();
        assert!(msg.contains("deeper than 64 levels"), "{msg}");
        let deep = format!(
            "mappings: {}1{}\n",
            "{a: ".repeat(20_000),
            "}".repeat(20_000)
        );
        assert!(parse(&deep).unwrap_err().contains("deeper than 64 levels"));
        let block = format!("mappings:\n{}x\n", "- ".repeat(20_000));
        let msg = parse(&block).unwrap_err();
        assert!(msg.contains("deeper than 128 levels"), "{msg}");
        // Brackets in quotes and comments do not count.
        let quoted = format!(
            "# {}\nmappings:\n  - {{name: \"a\", listen: 80, to: 8080}} # {}\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        parse(&quoted).unwrap();
        let big = format!(
            "mappings:\n{}",
            "#\n".repeat(MAX_FILE_BYTES as usize / 2 + 1)
        );
        let msg = parse(&big).unwrap_err();
        assert!(
            msg.contains(&format!("larger than {MAX_FILE_BYTES} bytes")),
            "{msg}"
        );
    }

    #[test]
    fn minimal_file() {
        let c = parse("mappings:\n  - listen: 80\n    to: 8080\n").unwrap();
        assert_eq!(c.mappings.len(), 1);
        let m = &c.mappings[0];
        assert_eq!(m.listen.addr, None);
        assert_eq!(m.listen.port.get(), 80);
        assert_eq!(m.target.host, TargetHost::Local);
        assert_eq!(m.protocol, Protocol::Tcp);
        assert_eq!(c.proxy, ProxySettings::default());
    }

    #[test]
    fn full_file() {
        let c = parse(
            "mappings:\n  - name: web\n    listen: \"[::]:443\"\n    to: \"127.0.0.1:8443\"\n    proxy_protocol: v2\n    protocol: both\n\
             proxy:\n  max_connections: 10\n  connect_timeout: 2s\n  idle_timeout: 1m\n  user: www-data\n\
             rules:\n  backend: iptables\n  enable_forwarding: true\n",
        )
        .unwrap();
        let m = &c.mappings[0];
        assert_eq!(m.listen.addr, Some("::".parse().unwrap()));
        assert_eq!(m.target.host, TargetHost::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(m.proxy_protocol, ProxyProtocol::V2);
        assert_eq!(m.protocol, Protocol::Both);
        assert_eq!(c.proxy.max_connections.get(), 10);
        assert_eq!(c.proxy.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.proxy.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.proxy.user, "www-data");
        assert_eq!(c.rules.backend, BackendChoice::Iptables);
        assert!(c.rules.enable_forwarding);
    }

    /// An error in a section names the section, comes in file order (the
    /// mapping before the proxy settings below it) and says what to do.
    #[test]
    fn section_errors_name_the_section() {
        let m = "mappings:\n  - listen: 80\n    to: 8080\n";
        for (yaml, needle) in [
            (
                format!("{m}proxy:\n  idle: 1s\n"),
                "test.yaml: proxy: unknown field `idle`",
            ),
            (
                format!("{m}rules:\n  backnd: auto\n"),
                "test.yaml: rules: unknown field `backnd`",
            ),
            (
                format!("{m}proxy: 5\n"),
                "proxy: expected a map of settings, found the number 5",
            ),
            (
                "mappings:\n  - listen: 80\n    to: 8080\n    too: 1\nproxy:\n  idle: 1s\n"
                    .to_owned(),
                "mapping #1: unknown field `too`",
            ),
        ] {
            let err = parse(&yaml).unwrap_err();
            assert!(err.contains(needle), "{yaml}: {err}");
            if err.contains("unknown field") {
                assert!(err.ends_with("remove or correct the key"), "{err}");
            }
        }
        // An empty section is no section.
        assert_eq!(
            parse(&format!("{m}proxy:\n")).unwrap().proxy,
            ProxySettings::default()
        );
    }

    /// Every duration has a limit the timers can hold, and a floor of one
    /// millisecond (their resolution): a value past either is refused,
    /// naming the setting and the limit. `idle_timeout: 18446744073709551615`
    /// was accepted, and `now + timeout` then wrapped to the past.
    #[test]
    fn durations_have_limits() {
        let m = "mappings:\n  - listen: 80\n    to: 8080\n";
        for (key, max) in DURATION_LIMITS {
            let limit = humantime::format_duration(max).to_string();
            for value in [
                "18446744073709551615",
                "20000000000000000",
                "\"600000000y\"",
                "\"99999999999999999999999s\"",
                "\"8days\"",
            ] {
                if value == "\"8days\"" && max < Duration::from_secs(8 * 86400) {
                    continue;
                }
                let err = parse(&format!("{m}proxy:\n  {key}: {value}\n"))
                    .expect_err(&format!("{key}: {value} accepted"));
                assert!(
                    err.contains(&format!("proxy.{key}")) && err.contains(&limit),
                    "{key}: {value}: {err}"
                );
            }
            for value in ["0", "\"0s\"", "\"1ns\"", "\"500us\""] {
                let err = parse(&format!("{m}proxy:\n  {key}: {value}\n"))
                    .expect_err(&format!("{key}: {value} accepted"));
                assert!(err.contains(&format!("proxy.{key}")), "{err}");
            }
            // The limit itself and the floor are fine.
            let c = parse(&format!("{m}proxy:\n  {key}: \"{limit}\"\n")).expect("the limit");
            let c2 = parse(&format!("{m}proxy:\n  {key}: 1ms\n")).expect("1ms");
            assert_ne!(c.proxy, c2.proxy);
        }
        assert_eq!(
            DURATION_LIMITS.map(|(k, _)| k),
            [
                "connect_timeout",
                "idle_timeout",
                "fin_timeout",
                "shutdown_timeout"
            ]
        );
    }

    #[test]
    fn max_connections_per_client() {
        let m = "mappings:\n  - listen: 80\n    to: 8080\n";
        let c = parse(&format!("{m}proxy:\n  max_connections_per_client: 20\n")).unwrap();
        assert_eq!(c.proxy.max_connections_per_client.get(), 20);
        for bad in ["0", "-1", "lots", "1.5"] {
            let err =
                parse(&format!("{m}proxy:\n  max_connections_per_client: {bad}\n")).unwrap_err();
            assert!(err.contains("proxy.max_connections_per_client"), "{err}");
        }
        // Well below max_connections, so one address cannot take them all.
        let d = ProxySettings::default();
        assert!(d.max_connections_per_client.get() * 4 <= d.max_connections.get());
    }

    #[test]
    fn udp_settings_have_defaults_and_bounds() {
        let m = "mappings:\n  - {listen: 443, to: 8443, protocol: udp}\n";
        let d = parse(m).unwrap().proxy;
        assert!(d.udp_idle_timeout >= Duration::from_secs(120));
        assert_eq!(d.udp_max_flows.get(), DEFAULT_UDP_MAX_FLOWS);
        assert_eq!(d.udp_receive_buffer, 4 << 20);
        for (text, bytes) in [
            ("4096", 4096),
            ("64KiB", 64 << 10),
            ("16 MiB", 16 << 20),
            ("1GiB", 1 << 30),
        ] {
            let c = parse(&format!("{m}proxy:\n  udp_receive_buffer: {text}\n")).unwrap();
            assert_eq!(c.proxy.udp_receive_buffer, bytes, "{text}");
        }
        let c = parse(&format!(
            "{m}proxy:\n  udp_idle_timeout: 30s\n  udp_max_flows: 10\n"
        ))
        .unwrap();
        assert_eq!(c.proxy.udp_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.proxy.udp_max_flows.get(), 10);
        for (bad, needle) in [
            ("udp_idle_timeout: 2d", "too long; the limit is 1day"),
            (
                "udp_idle_timeout: 0s",
                "udp_idle_timeout \"0s\" is too short",
            ),
            ("udp_max_flows: 0", "from 1 to 1048576"),
            ("udp_max_flows: 1048577", "from 1 to 1048576"),
            ("udp_receive_buffer: 4095", "from 4KiB to 1GiB"),
            ("udp_receive_buffer: 2GiB", "from 4KiB to 1GiB"),
            (
                "udp_receive_buffer: 4 MB",
                "udp_receive_buffer \"4 MB\" is not valid",
            ),
            ("udp_receive_buffer: -1", "from 4KiB to 1GiB"),
            ("udp_receive_buffer: MiB", "from 4KiB to 1GiB"),
        ] {
            let err = parse(&format!("{m}proxy:\n  {bad}\n")).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn specs() {
        let cases = [
            ("80:8080", None, TargetHost::Local),
            (
                "0.0.0.0:80:127.0.0.1:8080",
                Some("0.0.0.0"),
                TargetHost::Ip("127.0.0.1".parse().unwrap()),
            ),
            (
                "[::]:443:[::1]:8443",
                Some("::"),
                TargetHost::Ip("::1".parse().unwrap()),
            ),
            (
                "80:backend.lan:8080",
                None,
                TargetHost::Name("backend.lan".into()),
            ),
            ("10.0.0.1:80:8080", Some("10.0.0.1"), TargetHost::Local),
        ];
        for (spec, addr, host) in cases {
            let m = parse_spec(spec, 0).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(m.listen.addr, addr.map(|a| a.parse().unwrap()), "{spec}");
            assert_eq!(m.target.host, host, "{spec}");
        }
        assert_eq!(
            parse_spec("443:8443/udp", 0).unwrap().protocol,
            Protocol::Udp
        );
    }

    #[test]
    fn bad_specs_say_what_to_write() {
        for (spec, needle) in [
            ("80", "is not a mapping"),
            ("0:8080", "port 0"),
            ("80:70000", "out of range"),
            ("::1:80:8080", "brackets"),
            ("80:8080/sctp", "use tcp, udp or both"),
            ("1.2.3:80:8080", "not an IPv4 address"),
            ("80:[::1:8080", "unbalanced"),
        ] {
            let err = parse_spec(spec, 0).unwrap_err();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn overlaps() {
        let l = |s: &str| parse_listen(s).unwrap();
        assert!(listens_overlap(&l("80"), &l("10.0.0.1:80")));
        assert!(listens_overlap(&l("0.0.0.0:80"), &l("10.0.0.1:80")));
        assert!(!listens_overlap(&l("[::]:80"), &l("10.0.0.1:80")));
        assert!(!listens_overlap(&l("10.0.0.2:80"), &l("10.0.0.1:80")));
        assert!(!listens_overlap(&l("80"), &l("81")));
    }

    #[test]
    fn tcp_and_udp_on_one_port_do_not_conflict() {
        let c = parse(
            "mappings:\n  - {listen: 443, to: 8443}\n  - {listen: 443, to: 8443, protocol: udp}\n",
        );
        assert!(c.is_ok(), "{c:?}");
    }

    #[test]
    fn errors_name_file_mapping_and_value() {
        let err = parse("mappings:\n  - name: web\n    listen: 0\n    to: 8080\n").unwrap_err();
        assert!(
            err.starts_with("test.yaml: mapping #1 \"web\": listen \"0\""),
            "{err}"
        );
        let err =
            parse("mappings:\n  - {listen: 80, to: 8080}\n  - {name: b, listen: 80, to: 81}\n")
                .unwrap_err();
        assert!(
            err.contains("mapping #2 \"b\"") && err.contains("overlaps mapping #1"),
            "{err}"
        );
        let err = parse("mappings:\n  - {listen: 80, to: 8080, lisen: 3}\n").unwrap_err();
        assert!(err.contains("unknown field `lisen`"), "{err}");
        let err = parse("mappings: [\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn source_defaults() {
        let s = Source::default();
        assert_eq!(s.effective_file(), Some(PathBuf::from(DEFAULT_CONFIG)));
        let s = Source {
            file: None,
            specs: vec!["80:8080".into()],
        };
        assert_eq!(s.effective_file(), None);
        let c = load(&s).unwrap();
        assert_eq!(c.mappings.len(), 1);
    }

    /// A private directory for a test's files, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("lowport-config-{tag}-{}-{n}", std::process::id()));
            std::fs::create_dir(&dir).expect("a new private directory");
            TempDir(dir)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn chmod(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn root_trusts_only_what_root_or_the_invoking_user_controls() {
        let file = |uid, gid, mode: u32| Owner {
            uid,
            gid,
            mode: 0o100000 | mode,
            is_dir: false,
        };
        let dir = |uid, gid, mode: u32| Owner {
            uid,
            gid,
            mode: 0o040000 | mode,
            is_dir: true,
        };
        // (owner, invoking uid, SUDO_UID): trusted.
        for (o, invoking, sudo) in [
            (file(0, 0, 0o644), 0, None),
            (file(0, 0, 0o664), 0, None),
            (file(1000, 1000, 0o600), 1000, None),
            (file(1000, 1000, 0o644), 0, Some(1000)),
            (dir(0, 0, 0o1777), 0, None),
            (dir(0, 100, 0o1775), 0, None),
            (dir(0, 0, 0o755), 0, None),
        ] {
            assert_eq!(untrusted_owner(o, invoking, sudo), None, "{o:?}");
        }
        // Refused, and the reason names who could change it and the mode.
        for (o, invoking, sudo, why) in [
            (
                file(65534, 0, 0o644),
                0,
                None,
                "owned by uid 65534 (mode 0644)",
            ),
            (file(1000, 0, 0o644), 0, Some(1001), "owned by uid 1000"),
            (file(1000, 0, 0o644), 1001, None, "owned by uid 1000"),
            (
                file(0, 0, 0o666),
                0,
                None,
                "writable by everyone (mode 0666)",
            ),
            (file(0, 0, 0o1777), 0, None, "writable by everyone"),
            (
                dir(0, 0, 0o777),
                0,
                None,
                "writable by everyone (mode 0777)",
            ),
            (
                file(0, 100, 0o664),
                0,
                None,
                "writable by group 100 (mode 0664)",
            ),
            (dir(0, 100, 0o775), 0, None, "writable by group 100"),
        ] {
            let got = untrusted_owner(o, invoking, sudo);
            assert!(
                got.as_deref().is_some_and(|g| g.contains(why)),
                "{o:?}: {got:?}"
            );
        }
    }

    #[test]
    fn a_config_file_is_read_whole_up_to_the_limit() {
        let dir = TempDir::new("read");
        let path = dir.0.join("lowport.yaml");
        let text = "mappings:\n  - {listen: 80, to: 8080}\n";
        std::fs::write(&path, text).unwrap();
        chmod(&path, 0o644);
        let read = |p: &Path| match read_file(p) {
            Ok(t) => Ok(t),
            Err(ReadError::Io(e)) => Err(e.to_string()),
            Err(ReadError::Unsafe { path, why }) => Err(format!("{}: {why}", path.display())),
        };
        assert_eq!(read(&path).as_deref(), Ok(text));
        // As many bytes as lowport reads, and one more.
        let limit = usize::try_from(MAX_FILE_BYTES).unwrap();
        std::fs::write(&path, "#".repeat(limit)).unwrap();
        assert_eq!(read(&path).map(|t| t.len()), Ok(limit));
        std::fs::write(&path, "#".repeat(limit + 1)).unwrap();
        let err = read(&path).unwrap_err();
        assert!(
            err.contains(&format!("larger than {MAX_FILE_BYTES} bytes")),
            "{err}"
        );
    }

    #[test]
    fn root_refuses_a_config_file_others_can_change() {
        let dir = TempDir::new("trust");
        chmod(&dir.0, 0o755);
        let path = dir.0.join("lowport.yaml");
        std::fs::write(&path, "mappings:\n  - {listen: 80, to: 8080}\n").unwrap();
        let source = Source {
            file: Some(path.clone()),
            specs: Vec::new(),
        };
        let root = rustix::process::geteuid().is_root();
        chmod(&path, 0o666);
        match load(&source) {
            // What root installs, anyone could have written.
            Err(e) if root => {
                let msg = e.to_string();
                assert!(msg.contains(&path.display().to_string()), "{msg}");
                assert!(msg.contains("writable by everyone"), "{msg}");
            }
            Ok(c) if !root => assert_eq!(c.mappings.len(), 1),
            other => panic!("as root: {root}: {other:?}"),
        }
        // Its directory, too: anyone could replace the file.
        chmod(&path, 0o644);
        chmod(&dir.0, 0o777);
        match load(&source) {
            Err(e) if root => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("in {}", dir.0.display())), "{msg}");
            }
            Ok(c) if !root => assert_eq!(c.mappings.len(), 1),
            other => panic!("as root: {root}: {other:?}"),
        }
        chmod(&dir.0, 0o755);
        assert_eq!(load(&source).unwrap().mappings.len(), 1);
    }

    #[test]
    fn a_missing_default_file_says_how_to_give_mappings() {
        let missing = |_: &Path| -> Result<String, std::io::Error> {
            Err(std::io::ErrorKind::NotFound.into())
        };
        let denied = |_: &Path| -> Result<String, std::io::Error> {
            Err(std::io::ErrorKind::PermissionDenied.into())
        };
        let hint = "-m 80:8080";
        let msg = load_with(&Source::default(), missing)
            .unwrap_err()
            .to_string();
        assert!(msg.contains(DEFAULT_CONFIG) && msg.contains(hint), "{msg}");
        // A file the user named, or one that exists: no such hint.
        let named = Source {
            file: Some("/etc/x.yaml".into()),
            specs: Vec::new(),
        };
        let msg = load_with(&named, missing).unwrap_err().to_string();
        assert!(msg.contains("/etc/x.yaml") && !msg.contains(hint), "{msg}");
        let msg = load_with(&Source::default(), denied)
            .unwrap_err()
            .to_string();
        assert!(!msg.contains(hint), "{msg}");
    }

    #[test]
    fn a_file_read_by_another_reader_has_the_same_limit() {
        let limit = usize::try_from(MAX_FILE_BYTES).unwrap();
        let source = Source {
            file: Some("big.yaml".into()),
            specs: Vec::new(),
        };
        let with = |text: String| {
            load_with(&source, move |_: &Path| {
                Ok::<_, std::io::Error>(text.clone())
            })
            .unwrap_err()
            .to_string()
        };
        // At the limit: read, and found empty.
        let msg = with("#".repeat(limit));
        assert!(msg.contains("the file is empty"), "{msg}");
        let msg = with("#".repeat(limit + 1));
        assert!(
            msg.contains(&format!("larger than {MAX_FILE_BYTES} bytes")),
            "{msg}"
        );
        // A reader's refusal is passed on, naming the file.
        let msg = load_with(&source, |p: &Path| -> Result<String, ReadError> {
            Err(ReadError::Unsafe {
                path: p.to_owned(),
                why: "owned by uid 7".into(),
            })
        })
        .unwrap_err()
        .to_string();
        assert!(msg.contains("big.yaml is owned by uid 7"), "{msg}");
        assert!(msg.contains("chmod go-w big.yaml"), "{msg}");
    }

    #[test]
    fn backend_choices_read_back_as_written() {
        for (word, choice) in [
            ("auto", BackendChoice::Auto),
            ("nftables", BackendChoice::Nftables),
            ("nft", BackendChoice::Nftables),
            ("iptables", BackendChoice::Iptables),
        ] {
            assert_eq!(word.parse::<BackendChoice>(), Ok(choice));
            assert_eq!(choice.to_string().parse::<BackendChoice>(), Ok(choice));
        }
        let err = "ipfw".parse::<BackendChoice>().unwrap_err();
        assert!(
            err.contains("\"ipfw\"") && err.contains("nftables"),
            "{err}"
        );
    }

    #[test]
    fn durations_have_the_documented_defaults_and_limits() {
        // dist/man/lowport.1 says these.
        let d = ProxySettings::default();
        assert_eq!(d.connect_timeout, Duration::from_secs(5));
        assert_eq!(d.idle_timeout, Duration::from_secs(600));
        assert_eq!(d.fin_timeout, Duration::from_secs(60));
        assert_eq!(d.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(d.udp_idle_timeout, Duration::from_secs(180));
        let m = "mappings:\n  - listen: 80\n    to: 8080\n";
        let day = 24 * 3600;
        for (key, max_secs) in [
            ("connect_timeout", 600),
            ("idle_timeout", 7 * day),
            ("fin_timeout", 7 * day),
            ("shutdown_timeout", day),
            ("udp_idle_timeout", day),
        ] {
            // A number is seconds.
            let c = parse(&format!("{m}proxy:\n  {key}: {max_secs}\n"))
                .unwrap_or_else(|e| panic!("{key}: {max_secs}: {e}"));
            let got = match key {
                "connect_timeout" => c.proxy.connect_timeout,
                "idle_timeout" => c.proxy.idle_timeout,
                "fin_timeout" => c.proxy.fin_timeout,
                "shutdown_timeout" => c.proxy.shutdown_timeout,
                _ => c.proxy.udp_idle_timeout,
            };
            assert_eq!(got, Duration::from_secs(max_secs), "{key}");
            let over = max_secs + 1;
            let err = parse(&format!("{m}proxy:\n  {key}: {over}\n")).unwrap_err();
            assert!(
                err.contains(&format!("proxy.{key} \"{over}\" is too long")),
                "{err}"
            );
        }
        let c = parse(&format!("{m}proxy:\n  udp_max_flows: 1048576\n")).unwrap();
        assert_eq!(c.proxy.udp_max_flows.get(), 1 << 20);
    }

    #[test]
    fn the_proxy_user_is_one_name() {
        let m = "mappings:\n  - listen: 80\n    to: 8080\n";
        for bad in ["\"\"", "\"www data\"", "\"www\\tdata\"", "5", "[a]"] {
            let err = parse(&format!("{m}proxy:\n  user: {bad}\n")).unwrap_err();
            assert!(
                err.contains("proxy.user") && err.contains("not a user name"),
                "{bad}: {err}"
            );
        }
        let c = parse(&format!("{m}proxy:\n  user: _lowport\n")).unwrap();
        assert_eq!(c.proxy.user, "_lowport");
    }

    #[test]
    fn flow_nesting_is_counted_outside_quotes_and_comments() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        // At the limit, and one deeper, on the line that goes deeper.
        let at = format!("a: 1\nmappings: {}\n", deep(MAX_FLOW_DEPTH));
        assert!(!parse(&at).unwrap_err().contains("nesting"));
        let over = format!("a: 1\nb: 2\nmappings: {}\n", deep(MAX_FLOW_DEPTH + 1));
        let msg = parse(&over).unwrap_err();
        assert!(msg.contains("line 3: YAML nesting deeper than 64"), "{msg}");
        // Closed brackets are no longer open: many shallow lists are fine.
        let many = format!("a: [{}]\n", vec![deep(40); 10].join(", "));
        assert!(!parse(&many).unwrap_err().contains("nesting"), "{many}");
        // Well over the limit: a quote that ended one character early
        // would still leave more than enough counted.
        let open = "[".repeat(MAX_FLOW_DEPTH + 10);
        for (text, counted) in [
            // Quoted, in either quotes, with escaped quotes inside.
            (format!("a: \"{open}\"\n"), false),
            (format!("a: '{open}'\n"), false),
            (format!("a: \"x\\\"{open}\"\n"), false),
            // A comment, after a space or a tab, or a whole line.
            (format!("a: 1 # {open}\n"), false),
            (format!("a: 1\t# {open}\n"), false),
            (format!("# {open}\na: 1\n"), false),
            // Not a comment: '#' inside a word. Not a quote: an apostrophe.
            (format!("a: b#{open}\n"), true),
            (format!("a: it's {open}\n"), true),
            // A quote that ended: what follows counts.
            (format!("a: [\"x\", {open}\n"), true),
        ] {
            let msg = parse(&text).unwrap_err();
            assert_eq!(msg.contains("deeper than 64"), counted, "{text}: {msg}");
        }
    }

    #[test]
    fn mapping_values_are_refused_naming_the_key_and_what_was_found() {
        let one = |body: &str| parse(&format!("mappings:\n  - {{{body}}}\n"));
        for (body, needle) in [
            ("to: 8080", "mapping #1: `listen` is missing"),
            (
                "listen: [80], to: 8080",
                "`listen` must be a port or text, found a list",
            ),
            ("listen: {a: 1}, to: 8080", "found a map"),
            ("listen: true, to: 8080", "found the boolean true"),
            ("listen: 80, to: !x 8080", "found a tagged value"),
            ("listen: 80", "`to` is missing"),
            (
                "listen: 80, to: 8080, protocol: 5",
                "protocol \"5\" is not valid",
            ),
            ("listen: 80, to: 8080, protocol: true", "protocol \"true\""),
            (
                "listen: 80, to: 8080, proxy_protocol: v3",
                "proxy_protocol \"v3\"",
            ),
            (
                "listen: 80, to: 8080, proxy_protocol: 2",
                "proxy_protocol \"2\"",
            ),
            (
                "name: 5, listen: 80, to: 8080",
                "name must be text, found the number 5",
            ),
            ("name: \"\", listen: 80, to: 8080", "name \"\" is not valid"),
            (
                "name: a b, listen: 80, to: 8080",
                "name \"a b\" is not valid",
            ),
            ("listen: \"[::1]\", to: 8080", "a port must follow [::1]"),
            ("listen: \"[::1:80\", to: 8080", "without ']'"),
            (
                "listen: \"[x]:80\", to: 8080",
                "\"x\" is not an IPv6 address",
            ),
            (
                "listen: \"::1:80\", to: 8080",
                "IPv6 address must be written in brackets",
            ),
            ("listen: \"\", to: 8080", "port \"\" is not a number"),
            ("listen: \"8o\", to: 8080", "port \"8o\" is not a number"),
            ("listen: 65536, to: 8080", "port 65536 is out of range"),
            (
                "listen: 80, to: \"[db]:80\"",
                "\"db\" is not an IPv6 address",
            ),
            (
                "listen: 80, to: \"1.2.3:80\"",
                "neither an IPv4 address nor a host name",
            ),
            (
                "listen: 80, to: \"0.0.0.0:80\"",
                "0.0.0.0 cannot be a target",
            ),
            ("listen: 80, to: \"[ff02::1]:80\"", "a multicast address"),
        ] {
            let err = one(body).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
        let err = parse("mappings:\n  - 5\n").unwrap_err();
        assert!(
            err.contains("mapping #1: expected a map with `listen:` and `to:`, found the number 5"),
            "{err}"
        );
        let err = parse("mappings:\n  - ~\n").unwrap_err();
        assert!(err.contains("found nothing (null)"), "{err}");
        let err = parse("mappings:\n  - \"80:8080\"\n").unwrap_err();
        assert!(err.contains("found the text \"80:8080\""), "{err}");
        let name = "n".repeat(64);
        for (body, want) in [
            (
                format!("name: {name}, listen: 80, to: 8080"),
                Some(name.as_str()),
            ),
            (format!("name: {name}x, listen: 80, to: 8080"), None),
        ] {
            let got = one(&body).map(|c| c.mappings[0].name.clone());
            match want {
                Some(n) => assert_eq!(got, Ok(Some(n.to_owned()))),
                None => assert!(got.unwrap_err().contains("1 to 64"), "{body}"),
            }
        }
        let c = one("listen: \"[::1]:65535\", to: \"[fd00::1]:1\", proxy_protocol: false").unwrap();
        let m = &c.mappings[0];
        assert_eq!(m.listen.addr, Some("::1".parse().unwrap()));
        assert_eq!(m.listen.port.get(), 65535);
        assert_eq!(m.target.host, TargetHost::Ip("fd00::1".parse().unwrap()));
        assert_eq!(m.proxy_protocol, ProxyProtocol::Off);
        for (word, want) in [
            ("off", ProxyProtocol::Off),
            ("v1", ProxyProtocol::V1),
            ("v2", ProxyProtocol::V2),
        ] {
            let c = one(&format!("listen: 80, to: 8080, proxy_protocol: {word}")).unwrap();
            assert_eq!(c.mappings[0].proxy_protocol, want, "{word}");
        }
    }

    #[test]
    fn a_spec_of_one_field_is_not_taken_for_an_ipv6_address() {
        let err = parse_spec("80", 0).unwrap_err();
        assert!(
            err.contains("is not a mapping") && !err.contains("brackets"),
            "{err}"
        );
        let err = parse_spec("1:2:3:4:5", 0).unwrap_err();
        assert!(err.contains("must be written in brackets"), "{err}");
    }
}

//! The only module that knows YAML: parse `lowport.yaml` and `-m` specs, then
//! validate them into [`Mapping`]s and typed settings.

use std::num::NonZeroUsize;
use std::time::Duration;

use crate::mapping::Mapping;

/// Proxy-mode settings (`proxy:` section), validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// At most this many client connections at once; accepting pauses above it.
    pub max_connections: NonZeroUsize,
    /// Per resolved backend address.
    pub connect_timeout: Duration,
    /// Close a connection when neither side sent anything for this long.
    pub idle_timeout: Duration,
    /// How long a half-closed connection may linger.
    pub fin_timeout: Duration,
    /// On SIGTERM/SIGINT: how long live connections may finish.
    pub shutdown_timeout: Duration,
    /// When started as root: the user to switch to after binding.
    pub user: String,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            max_connections: NonZeroUsize::new(4096).expect("non-zero"),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            fin_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
            user: "nobody".to_owned(),
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

//! Backend names: the control plane resolves them (getaddrinfo blocks;
//! the loop must not), once per connection or flow; the answer is checked
//! as literal targets are before anything connects to it.

use std::net::SocketAddr;

use super::{Engine, Entry, Phase};

impl Engine {
    pub(super) fn resolved(
        &mut self,
        key: usize,
        generation: u32,
        addrs: Result<Vec<SocketAddr>, String>,
    ) {
        let Some(Entry::Conn(c)) = self.entries.get_mut(key) else {
            return;
        };
        if c.generation != generation || !matches!(c.phase, Phase::Resolving { .. }) {
            return;
        }
        match addrs.and_then(usable_addresses) {
            Ok(usable) => {
                c.addrs = usable;
                self.connect_next(key);
            }
            Err(e) => self.refuse(key, e),
        }
    }
}

/// The addresses a backend name resolved to that can be backends, in the
/// resolver's order, or why there is none. Checked as a literal target is
/// (mapping.rs): a name that resolves to the broadcast, unspecified or a
/// multicast address is not a backend.
pub(super) fn usable_addresses(addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
    if addrs.is_empty() {
        return Err("the name resolved to no address".to_owned());
    }
    let (usable, unusable): (Vec<_>, Vec<_>) = addrs
        .into_iter()
        .partition(|addr| crate::mapping::unusable_target(addr.ip()).is_none());
    if !usable.is_empty() {
        return Ok(usable);
    }
    let why = unusable
        .iter()
        .map(|addr| {
            let what = crate::mapping::unusable_target(addr.ip()).unwrap_or("");
            format!("{}: {what}, not a backend", addr.ip())
        })
        .collect::<Vec<_>>()
        .join("; ");
    Err(format!("the name resolved only to {why}"))
}

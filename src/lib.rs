//! lowport: reach an unprivileged server on privileged ports, through kernel
//! NAT rules (nftables or iptables) or a zero-copy splice proxy, from one
//! YAML description.

pub mod check;
pub mod cli;
pub mod commands;
pub mod config;
pub mod firewall;
pub mod generate;
pub mod mapping;
pub mod privilege;
pub mod proxy;

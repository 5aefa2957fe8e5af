//! The iptables-save parser and decoder: three save outputs (IPv4 nat,
//! IPv4 raw, IPv6 nat), separated by NUL bytes, decode to a rule set or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowport::firewall::iptables;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let v4_nat = parts.next().unwrap_or("");
    let v4_raw = parts.next().unwrap_or("");
    let v6_nat = parts.next().unwrap_or("");
    let _ = iptables::decode_save_for_fuzzing(v4_nat, v4_raw, v6_nat);
});

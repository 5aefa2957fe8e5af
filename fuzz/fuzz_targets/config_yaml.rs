//! The YAML config: parse, validate, plan, and render for both backends.
//! Nothing may panic, and rendering a plan must succeed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(rules) = lowport_fuzz_common::plan_yaml(text) {
        let _ = lowport::firewall::nft::render(&rules);
        let _ = lowport::firewall::iptables::restore_input_for_fuzzing(&rules);
    }
});

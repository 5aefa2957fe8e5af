//! `-m` specs: parse one, and if it parses, plan it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = lowport::config::parse_spec(spec, 0) {
        let _ = m.to_string();
        let _ = lowport::firewall::plan::plan(&[m], &lowport_fuzz_common::FakeHost);
    }
});

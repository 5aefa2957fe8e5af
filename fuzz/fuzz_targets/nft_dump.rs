//! The nftables dump decoder: any netlink bytes decode to a rule set or an
//! error, never a panic; a rule set that decodes is one lowport would write
//! again in the same form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowport::firewall::nft;

fuzz_target!(|data: &[u8]| {
    let chains = lowport_fuzz_common::all_chains();
    let Ok(set) = nft::decode_dump_for_fuzzing(data, &chains) else {
        return;
    };
    // What decoded is what lowport makes of those rules: encode it and
    // decode it again.
    if let Ok(bytes) = nft::batch_bytes_for_fuzzing(&set) {
        let again = nft::decode_dump_for_fuzzing(&bytes, &chains);
        assert_eq!(again.as_ref(), Ok(&set));
    }
});

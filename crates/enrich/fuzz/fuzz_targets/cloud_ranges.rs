//! Fuzzes the cloud prefix files (AWS ip-ranges.json, GCP cloud.json, Google goog.json,
//! Azure ServiceTags_*.json). The first byte picks the provider; the rest is the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podflow_enrich::{CloudRanges, Provider};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let provider = match which % 4 {
        0 => Provider::Aws,
        1 => Provider::Gcp,
        2 => Provider::Google,
        _ => Provider::Azure,
    };
    let mut b = CloudRanges::builder();
    if b.add_text(provider, "fuzz.json", text).is_ok() {
        let ranges = b.build();
        let _ = ranges.lookup("52.95.110.1".parse().expect("constant address"));
    }
});

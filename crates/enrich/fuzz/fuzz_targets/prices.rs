//! Fuzzes the price table (`--prices`, YAML): prices per class, cloud and region with
//! tiers and free allowances.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podflow_enrich::PriceTable;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = PriceTable::from_yaml(text, "fuzz.yaml");
});

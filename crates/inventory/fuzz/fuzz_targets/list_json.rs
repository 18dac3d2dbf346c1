//! Fuzzes inventory files in JSON: one List or object, or several concatenated values
//! (`kubectl get ... -o json`). Any input must give an inventory or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podflow_inventory::{IndexConfig, Inventory, IpIndex};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Forced to the JSON path, whatever the first character.
    let mut s = String::with_capacity(text.len() + 1);
    if !text.trim_start().starts_with('{') {
        s.push('{');
    }
    s.push_str(text);
    if let Ok(inv) = Inventory::parse(&s, "fuzz.json") {
        let _ = IpIndex::build(&inv, &[], &IndexConfig::default());
    }
});

//! Fuzzes inventory files in YAML: a Kubernetes List or objects, one or many documents
//! (what `kubectl get ... -o yaml` writes). Any input must give an inventory or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podflow_inventory::{IndexConfig, Inventory, IpIndex};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A leading `{` would make it JSON: that is the other target's.
    if text.trim_start().starts_with('{') {
        return;
    }
    if let Ok(inv) = Inventory::parse(text, "fuzz.yaml") {
        // What parsed must also index (the reload path does both).
        let _ = IpIndex::build(&inv, &[], &IndexConfig::default());
    }
});

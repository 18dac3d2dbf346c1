//! Replays the fuzz targets' committed inputs (fuzz/seeds/, plus any crash input saved
//! there) through the same calls, so `cargo test` catches a regression without cargo-fuzz.

use podflow_inventory::{IndexConfig, Inventory, IpIndex};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    podflow_testkit::fuzz_seeds(env!("CARGO_MANIFEST_DIR"), target)
}

#[test]
fn yaml_and_json_seeds_parse_or_fail_cleanly() {
    let mut parsed = 0;
    for (target, json) in [("list_yaml", false), ("list_json", true)] {
        for (name, data) in inputs(target) {
            let Ok(text) = std::str::from_utf8(&data) else {
                continue;
            };
            let mut s = String::new();
            if json && !text.trim_start().starts_with('{') {
                s.push('{');
            }
            s.push_str(text);
            match Inventory::parse(&s, &name) {
                Ok(inv) => {
                    parsed += 1;
                    let _ = IpIndex::build(&inv, &[], &IndexConfig::default());
                }
                Err(e) => assert!(e.to_string().starts_with(&name), "{e}"),
            }
        }
    }
    // kubectl-list.yaml, multi-doc.yaml and list.json are real inventories.
    assert!(parsed >= 3, "{parsed}");
}

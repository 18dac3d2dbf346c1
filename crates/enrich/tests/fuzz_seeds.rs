//! Replays the fuzz targets' committed inputs (fuzz/seeds/) through the same calls.

use podflow_enrich::{CloudRanges, EnrichConfig, PriceTable, Provider};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    podflow_testkit::fuzz_seeds(env!("CARGO_MANIFEST_DIR"), target)
}

#[test]
fn config_price_and_cloud_range_seeds_load() {
    for (name, data) in inputs("config") {
        let text = String::from_utf8(data).expect("utf-8");
        EnrichConfig::from_yaml(&text, &name).expect("the seed configs are valid");
    }
    for (name, data) in inputs("prices") {
        let text = String::from_utf8(data).expect("utf-8");
        PriceTable::from_yaml(&text, &name).expect("the seed price tables are valid");
    }
    for (name, data) in inputs("cloud_ranges") {
        let (which, rest) = data.split_first().expect("provider byte");
        let provider = match which % 4 {
            0 => Provider::Aws,
            1 => Provider::Gcp,
            2 => Provider::Google,
            _ => Provider::Azure,
        };
        let text = std::str::from_utf8(rest).expect("utf-8");
        let mut b = CloudRanges::builder();
        let n = b
            .add_text(provider, &name, text)
            .expect("the seed files load");
        assert!(n > 0, "{name}: no prefixes");
    }
}

//! Fuzzes the pipeline config file (`--config`, YAML or JSON): cloud, region, app label
//! keys and user CIDR rules, validated the way startup does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podflow_enrich::{EnrichConfig, KnownNetworks};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = EnrichConfig::from_yaml(text, "fuzz.yaml") {
        // from_yaml validated the rules: building them again must succeed.
        KnownNetworks::build(&cfg.networks, "fuzz.yaml").expect("validated rules build");
    }
});

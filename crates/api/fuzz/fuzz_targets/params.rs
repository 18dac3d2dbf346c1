//! Fuzzes the HTTP API's query parameters: a raw query string through axum's `Query`
//! extractor and the checks every endpoint shares (`from`, `to`, `limit`, `view`,
//! `group_by`, dimension filters, `window`). Any string must give a query or a 400
//! message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(qs) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(msg) = podflow_api::check_query_string(qs) {
        assert!(!msg.is_empty());
    }
});

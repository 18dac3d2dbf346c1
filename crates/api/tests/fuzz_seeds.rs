//! Replays the params fuzz target's committed inputs (fuzz/seeds/params/).

#[test]
fn query_string_seeds_parse_or_answer_a_message() {
    let mut seen = 0;
    for (name, data) in podflow_testkit::fuzz_seeds(env!("CARGO_MANIFEST_DIR"), "params") {
        let qs = String::from_utf8(data).unwrap_or_else(|_| panic!("{name}: not UTF-8"));
        if let Err(msg) = podflow_api::check_query_string(&qs) {
            assert!(!msg.is_empty());
        }
        seen += 1;
    }
    assert!(seen >= 5);
    assert_eq!(
        podflow_api::check_query_string("from=1700000000&to=1700003600&limit=50&view=raw"),
        Ok(())
    );
    assert_eq!(
        podflow_api::check_query_string("limit=0"),
        Err("`limit` (0) must be between 1 and 10000".into())
    );
}

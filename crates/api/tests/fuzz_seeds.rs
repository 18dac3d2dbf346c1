//! Replays the params fuzz target's committed inputs (fuzz/seeds/params/).

use std::path::PathBuf;

#[test]
fn query_string_seeds_parse_or_answer_a_message() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/params");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).expect("seeds") {
        let p = e.expect("entry").path();
        let qs = std::fs::read_to_string(&p).expect("seed");
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

//! Replays the batch fuzz target's committed inputs (fuzz/seeds/batch/): decode, convert,
//! round-trip, as the target does.

use podflow_proto::{At, ObservationBatch, ip_from, observation_from, observation_pb};
use prost::Message;

#[test]
fn batch_seeds_decode_convert_and_round_trip() {
    let mut converted = 0;
    let mut refused = 0;
    for (_, data) in podflow_testkit::fuzz_seeds(env!("CARGO_MANIFEST_DIR"), "batch") {
        let batch = ObservationBatch::decode(data.as_slice()).expect("the seeds are batches");
        for (index, p) in batch.observations.iter().enumerate() {
            let at = At {
                agent: &batch.agent_id,
                seq: batch.seq,
                index,
            };
            match observation_from(p, at) {
                Ok(o) => {
                    converted += 1;
                    assert_eq!(observation_from(&observation_pb(&o), at), Ok(o));
                }
                Err(e) => {
                    refused += 1;
                    assert!(e.to_string().starts_with("batch "), "{e}");
                }
            }
        }
        for a in &batch.local_addrs {
            assert!(ip_from(a).is_some());
        }
        assert_eq!(
            ObservationBatch::decode(batch.encode_to_vec().as_slice()),
            Ok(batch)
        );
    }
    assert_eq!((converted, refused), (2, 1));
}

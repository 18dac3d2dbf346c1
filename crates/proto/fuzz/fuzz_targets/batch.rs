//! Fuzzes what the server does with an agent's message: protobuf-decode an
//! ObservationBatch, then convert every observation and address into the model.
//! Whatever converts must round-trip: model -> protobuf -> model gives it back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podflow_proto::{At, ObservationBatch, ip_from, observation_from, observation_pb};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = ObservationBatch::decode(data) else {
        return;
    };
    for (index, p) in batch.observations.iter().enumerate() {
        let at = At {
            agent: &batch.agent_id,
            seq: batch.seq,
            index,
        };
        if let Ok(o) = observation_from(p, at) {
            let back = observation_from(&observation_pb(&o), at)
                .expect("a converted observation converts back");
            assert_eq!(back, o, "model -> protobuf -> model");
        }
    }
    for a in &batch.local_addrs {
        let _ = ip_from(a);
    }
    // Re-encoding what decoded must decode to the same message.
    let again = ObservationBatch::decode(batch.encode_to_vec().as_slice())
        .expect("re-encoded batch decodes");
    assert_eq!(again, batch);
});

//! The insert deduplication token: a stable hash of everything a batch writes.

use podflow_model::FlowRow;
use podflow_model::hash::Fnv128;

use super::row::v6;
use crate::columns;

/// The insert deduplication token of a batch: a hash of everything written, so the same
/// batch sent again (a retry after a lost reply) is dropped by ClickHouse.
pub fn batch_token(rows: &[FlowRow]) -> String {
    let mut h = Fnv128::new();
    h.u64(rows.len() as u64);
    for r in rows {
        h.bytes(&r.interval_start.to_le_bytes());
        h.bytes(&r.interval_s.to_le_bytes());
        h.str(&r.observer);
        let k = &r.key;
        h.bytes(&[k.proto.0, u8::from(k.local_initiated)]);
        h.bytes(&v6(k.local).octets());
        h.bytes(&v6(k.remote).octets());
        h.bytes(&k.responder_port.to_le_bytes());
        match k.service {
            Some((a, p)) => {
                h.bytes(&[1]);
                h.bytes(&v6(a).octets());
                h.bytes(&p.to_le_bytes());
            }
            None => h.bytes(&[0]),
        }
        for v in r.totals.columns() {
            h.u64(v);
        }
        h.u64(r.cost_usd.to_bits());
        for s in columns::values(&r.labels) {
            h.str(s);
        }
        h.bytes(&[u8::from(r.labels.remote_observed)]);
    }
    format!("podflow-{:032x}", h.0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::testing::row;

    #[test]
    fn the_token_of_a_batch_does_not_change_between_builds() {
        let mut r = row(1_700_000_000, "fd00::2", 1000);
        Arc::make_mut(&mut r.labels).remote_observed = true;
        // Changes only when the columns a row writes change (the Service zone columns
        // of schema version 5 did), never from one build to the next.
        assert_eq!(
            batch_token(&[r]),
            "podflow-d81443bda4ee9fa4938c92cadbeb0f11"
        );
    }
}

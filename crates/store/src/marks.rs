//! An agent mark's pending chunks as one text value, the same in both stores:
//! `token day seq,seq,...` per chunk, chunks separated by `;`.

use podflow_model::ChunkId;

/// The text of `agent`'s pending chunks.
pub(crate) fn encode(pending: &[ChunkId]) -> String {
    pending
        .iter()
        .map(|c| {
            let seqs: Vec<String> = c.seqs.iter().map(u64::to_string).collect();
            format!("{} {} {}", c.token, c.day, seqs.join(","))
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The pending chunks of `agent` read back from [`encode`]'s text; `None` when the text
/// is not such (a corrupt row).
pub(crate) fn decode(agent: &str, text: &str) -> Option<Vec<ChunkId>> {
    text.split(';')
        .filter(|s| !s.is_empty())
        .map(|c| {
            let mut it = c.split(' ');
            let token = it.next()?.to_string();
            let day = it.next()?.parse().ok()?;
            let seqs = it
                .next()?
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().ok())
                .collect::<Option<Vec<u64>>>()?;
            if it.next().is_some() || token.is_empty() {
                return None;
            }
            Some(ChunkId {
                token,
                agent: Some(agent.to_string()),
                seqs,
                day,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_chunks_round_trip_as_text() {
        let p = vec![
            ChunkId {
                token: "podflow-c1-ab".into(),
                agent: Some("a".into()),
                seqs: vec![5, 6],
                day: 20_000,
            },
            ChunkId {
                token: "T".into(),
                agent: Some("a".into()),
                seqs: vec![9],
                day: -1,
            },
        ];
        let text = encode(&p);
        assert_eq!(text, "podflow-c1-ab 20000 5,6;T -1 9");
        assert_eq!(decode("a", &text), Some(p));
        assert_eq!(decode("a", ""), Some(Vec::new()));
        assert_eq!(decode("a", "T x 1"), None);
    }
}

//! Which failed ClickHouse requests are worth sending again, and how long to wait first.

/// ClickHouse error codes worth a retry: overload, timeouts, network, replicas/keeper.
const TRANSIENT_CODES: &[u32] = &[
    3,   // UNEXPECTED_END_OF_FILE
    159, // TIMEOUT_EXCEEDED
    164, // READONLY (replica read-only while keeper reconnects)
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    252, // TOO_MANY_PARTS
    285, // TOO_FEW_LIVE_REPLICAS
    319, // UNKNOWN_STATUS_OF_INSERT
    425, // SYSTEM_ERROR
    999, // KEEPER_EXCEPTION
];

/// The `Code: N.` of a server error text, if any.
fn error_code(text: &str) -> Option<u32> {
    let rest = text.trim_start().strip_prefix("Code: ")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

/// Whether a failed request may succeed when sent again.
pub(super) fn transient(e: &::clickhouse::error::Error) -> bool {
    use ::clickhouse::error::Error as E;
    match e {
        E::Network(_) | E::TimedOut => true,
        // A reply without a ClickHouse code comes from a proxy or a restarting server.
        E::BadResponse(text) => error_code(text).is_none_or(|c| TRANSIENT_CODES.contains(&c)),
        _ => false,
    }
}

/// The wait before retry `attempt` (1 for the first), in milliseconds: `base_ms`,
/// doubled for each retry before it, at most 10 s.
pub(super) fn backoff_ms(base_ms: u64, attempt: u32) -> u64 {
    base_ms
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(10_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_read_from_server_text() {
        assert_eq!(
            error_code("Code: 252. DB::Exception: Too many parts"),
            Some(252)
        );
        assert_eq!(
            error_code("Code: 60. DB::Exception: Unknown table"),
            Some(60)
        );
        assert_eq!(error_code("Service Unavailable"), None);
        assert!(transient(&::clickhouse::error::Error::BadResponse(
            "Code: 241. DB::Exception: Memory limit".into()
        )));
        assert!(!transient(&::clickhouse::error::Error::BadResponse(
            "Code: 60. DB::Exception: Unknown table".into()
        )));
        assert!(transient(&::clickhouse::error::Error::TimedOut));
    }

    #[test]
    fn the_wait_doubles_up_to_ten_seconds() {
        assert_eq!(backoff_ms(200, 1), 200);
        assert_eq!(backoff_ms(200, 2), 400);
        assert_eq!(backoff_ms(200, 6), 6400);
        assert_eq!(backoff_ms(200, 7), 10_000);
        assert_eq!(backoff_ms(u64::MAX, 40), 10_000);
    }
}

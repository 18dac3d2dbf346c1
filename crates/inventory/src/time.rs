//! RFC 3339 timestamps as Kubernetes writes them (`2024-05-01T10:00:00Z`).

/// A timestamp that is not RFC 3339; the message quotes the input and says what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an RFC 3339 time: {why}")]
pub struct TimeError {
    /// The text as given.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Nanoseconds since the Unix epoch of an RFC 3339 time.
///
/// Works on bytes throughout: any input, ASCII or not, gets an answer (never a panic).
pub fn parse_rfc3339_ns(s: &str) -> Result<u64, TimeError> {
    let fail = |why| TimeError {
        input: s.to_owned(),
        why,
    };
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(fail("expected YYYY-MM-DDTHH:MM:SS followed by a zone"));
    }
    // Digits only, so parsing bytes as decimal cannot overflow at these widths.
    let num = |r: std::ops::Range<usize>| -> Result<i64, TimeError> {
        let part = b.get(r).ok_or_else(|| fail("too short"))?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(fail("a digit was expected"));
        }
        Ok(part
            .iter()
            .fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0')))
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return Err(fail("expected HH:MM:SS"));
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(fail("a date or time field is out of range"));
    }
    let mut i = 19;
    let mut frac_ns: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(fail("no digits after the decimal point"));
        }
        // Nanosecond precision: further digits are dropped, fewer are scaled up.
        let digits = &b[start..i.min(start + 9)];
        frac_ns = digits
            .iter()
            .fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0'))
            * 10i64.pow(9 - digits.len() as u32);
    }
    let offset_s: i64 = match &b[i..] {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let o = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if *sign == b'-' { -o } else { o }
        }
        _ => return Err(fail("the zone must be Z or +HH:MM / -HH:MM")),
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    u64::try_from(secs)
        .ok()
        .and_then(|s| s.checked_mul(1_000_000_000))
        .and_then(|n| n.checked_add(u64::try_from(frac_ns).ok()?))
        .ok_or_else(|| fail("before 1970 or too far in the future"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_timestamps() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339_ns("2024-05-01T10:00:00Z"),
            Ok(1_714_557_600_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("2024-05-01T10:00:00.5Z"),
            Ok(1_714_557_600_500_000_000)
        );
        assert_eq!(
            parse_rfc3339_ns("2024-05-01T12:00:00+02:00"),
            Ok(1_714_557_600_000_000_000)
        );
        assert_eq!(parse_rfc3339_ns("2024-02-30").ok(), None);
        assert_eq!(parse_rfc3339_ns("2024-05-01T10:00:00").ok(), None);
        assert_eq!(parse_rfc3339_ns("yesterday at noon, roughly").ok(), None);
        assert_eq!(
            parse_rfc3339_ns("2024-05-01T10:00:00.123456789123Z"),
            Ok(1_714_557_600_123_456_789)
        );
    }

    #[test]
    fn non_ascii_zones_are_errors_naming_the_input() {
        // Each of these used to slice a multi-byte character in half and panic.
        for s in [
            "2024-05-01T10:00:00é:00:",
            "2024-05-01T10:00:00+0é:0",
            "2024-05-01T10:00:00+01:é",
            "2024-05-01T10:00:00.é",
            "2024-05-01T10:00:00Ω",
            "2024-é5-01T10:00:00Z",
            "２０２４-05-01T10:00:00Z",
        ] {
            let e = parse_rfc3339_ns(s).expect_err(s);
            assert_eq!(e.input, s);
            assert!(
                e.to_string()
                    .starts_with(&format!("{s:?} is not an RFC 3339 time: ")),
                "{e}"
            );
        }
        assert_eq!(
            parse_rfc3339_ns("2024-05-01T10:00:00é:00:").map_err(|e| e.to_string()),
            Err("\"2024-05-01T10:00:00é:00:\" is not an RFC 3339 time: the zone must be Z or +HH:MM / -HH:MM".into())
        );
    }

    #[test]
    fn no_input_panics() {
        // Every prefix and a character of each UTF-8 width at every position.
        let base = "2024-05-01T10:00:00.250+02:00";
        for cut in 0..=base.len() {
            let _ = parse_rfc3339_ns(&base[..cut]);
            for c in ['x', 'é', '€', '😀'] {
                let mut s = base.to_string();
                s.insert(cut, c);
                let _ = parse_rfc3339_ns(&s);
                let mut r: Vec<char> = base.chars().collect();
                if cut < r.len() {
                    r[cut] = c;
                    let _ = parse_rfc3339_ns(&r.iter().collect::<String>());
                }
            }
        }
    }
}

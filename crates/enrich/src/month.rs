//! Calendar months in UTC, from and to Unix seconds: what a bill's tiers and
//! allowances restart on.

use std::fmt;

use podflow_inventory::days_from_civil;
use serde::Serialize;

/// The earliest and latest times months are taken of (±2^40 s, some 35,000 years around
/// 1970): the arithmetic cannot overflow whatever time it is given.
const TIME_BOUND: i64 = 1 << 40;

/// A calendar month, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    year: i32,
    /// 1..=12.
    month: u8,
}

/// The civil (year, month) of a day since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

impl Month {
    /// A month; `None` unless `month` is 1..=12.
    pub fn new(year: i32, month: u8) -> Option<Month> {
        (1..=12).contains(&month).then_some(Month { year, month })
    }

    /// The month holding Unix second `t`.
    pub fn of(t: i64) -> Month {
        let days = t.clamp(-TIME_BOUND, TIME_BOUND).div_euclid(86_400);
        let (y, m) = civil_from_days(days);
        Month {
            year: y as i32,
            month: m as u8,
        }
    }

    /// Its first second (Unix seconds).
    pub fn start(self) -> i64 {
        days_from_civil(i64::from(self.year), i64::from(self.month), 1) * 86_400
    }

    /// The first second of the next month.
    pub fn end(self) -> i64 {
        self.next().start()
    }

    /// Its length, seconds.
    pub fn seconds(self) -> i64 {
        self.end() - self.start()
    }

    /// The month after.
    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Every month that overlaps `[from, to)`, in order (times beyond ±2^40 s are cut
    /// there, so no range asks for more than its months up to then).
    pub fn overlapping(from: i64, to: i64) -> Vec<Month> {
        let (from, to) = (
            from.clamp(-TIME_BOUND, TIME_BOUND),
            to.clamp(-TIME_BOUND, TIME_BOUND),
        );
        let mut out = Vec::new();
        if from >= to {
            return out;
        }
        let mut m = Month::of(from);
        while m.start() < to {
            out.push(m);
            m = m.next();
        }
        out
    }

    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.trim().split_once('-')?;
        if y.len() != 4 || m.len() != 2 {
            return None;
        }
        Month::new(y.parse().ok()?, m.parse().ok()?)
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl Serialize for Month {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_start_where_the_calendar_says() {
        // 2025-01-01T00:00:00Z, 2025-02-01, 2025-03-01 (2025 is not a leap year),
        // 2024-03-01 (2024 is).
        let jan = Month::of(1_735_689_600);
        assert_eq!(jan.to_string(), "2025-01");
        assert_eq!(jan.start(), 1_735_689_600);
        assert_eq!(jan.end(), 1_738_368_000);
        assert_eq!(jan.next().end(), 1_740_787_200);
        assert_eq!(jan.next().seconds(), 28 * 86_400);
        assert_eq!(Month::of(1_738_367_999), jan, "the last second of January");
        assert_eq!(Month::of(1_738_368_000).to_string(), "2025-02");
        assert_eq!(
            Month::parse("2024-02").map(Month::seconds),
            Some(29 * 86_400)
        );
        assert_eq!(
            Month::parse("2024-03").map(Month::start),
            Some(1_709_251_200)
        );
        assert_eq!(Month::of(0).to_string(), "1970-01");
        assert_eq!(Month::of(-1).to_string(), "1969-12");
        assert_eq!(
            Month::parse("2024-12").map(|m| m.next().to_string()),
            Some("2025-01".into())
        );
        assert_eq!(Month::parse("2025-13"), None);
        assert_eq!(Month::parse("25-01"), None);
        let ms = Month::overlapping(jan.start() + 5, jan.next().start() + 1);
        assert_eq!(ms, [jan, jan.next()]);
        assert_eq!(Month::overlapping(jan.start(), jan.end()), [jan]);
        assert!(Month::overlapping(10, 10).is_empty());
        // Far out times stay within the arithmetic, and a range out there is short.
        assert!(Month::overlapping(i64::MAX - 86_400, i64::MAX).is_empty());
        assert!(Month::overlapping(i64::MIN, i64::MIN + 86_400).is_empty());
        let _ = Month::of(i64::MAX).start();
        let _ = Month::of(i64::MIN).start();
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        let mut m = Month::of(days_from_civil(1900, 1, 1) * 86_400);
        for _ in 0..(400 * 12) {
            let s = m.start();
            assert_eq!(Month::of(s), m);
            assert_eq!(Month::of(s - 1).next(), m);
            assert!((28 * 86_400..=31 * 86_400).contains(&m.seconds()));
            m = m.next();
        }
    }
}

//! Longest-prefix match over IPv4 and IPv6 CIDRs.
//!
//! CIDRs are either nested or disjoint, so a set of them flattens into sorted,
//! non-overlapping ranges, each carrying the most specific prefix that covers it. A
//! lookup is then a binary search; a first-level index on the address's top 16 bits
//! narrows the search to a handful of ranges, which keeps a lookup around a few tens of
//! nanoseconds even with ~100k ranges.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network: address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a CIDR did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidrError {
    /// No `/` or the address part is not an IP address.
    BadAddress,
    /// The prefix length is not a number or too long for the family.
    BadLength,
    /// Bits are set after the prefix (`10.0.0.1/8`).
    HostBits,
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CidrError::BadAddress => "not an IP address",
            CidrError::BadLength => "bad prefix length",
            CidrError::HostBits => "bits set after the prefix length",
        })
    }
}

impl Cidr {
    /// A network from an address and a length; bits after the prefix are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(CidrError::BadLength);
        }
        let c = Cidr { addr, len };
        Ok(Cidr {
            addr: c.addr_of(c.first()),
            len,
        })
    }

    /// Parses `a.b.c.d/n` or `x::y/n`, refusing host bits when `strict`.
    pub fn parse(s: &str, strict: bool) -> Result<Cidr, CidrError> {
        let s = s.trim();
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| CidrError::BadAddress)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l.parse::<u8>().map_err(|_| CidrError::BadLength)?,
            None => max,
        };
        let c = Cidr::new(addr, len)?;
        if strict && c.addr != addr {
            return Err(CidrError::HostBits);
        }
        Ok(c)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is a zero-length prefix (the whole family).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `ip` (same family) is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let k = key_bits(ip);
        k >= self.first() && k <= self.last()
    }

    fn width(&self) -> u32 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// First address as a number (IPv4 in the low 32 bits).
    fn first(&self) -> u128 {
        let host = self.width() - u32::from(self.len);
        let k = key_bits(self.addr);
        if host >= 128 { 0 } else { (k >> host) << host }
    }

    /// Last address as a number.
    fn last(&self) -> u128 {
        let host = self.width() - u32::from(self.len);
        let ones = if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        };
        self.first() | ones
    }

    fn addr_of(&self, b: u128) -> IpAddr {
        match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(b as u32)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(b)),
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;
    /// Strict: host bits are an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cidr::parse(s, true)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn key_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

const NONE: u32 = u32::MAX;

/// The flattened ranges of one address family.
trait Key: Copy + Ord {
    fn top16(self) -> usize;
    fn narrow(v: u128) -> Self;
}

impl Key for u32 {
    fn top16(self) -> usize {
        (self >> 16) as usize
    }
    fn narrow(v: u128) -> Self {
        // Only IPv4 keys (< 2^32) reach this table.
        v as u32
    }
}

impl Key for u128 {
    fn top16(self) -> usize {
        (self >> 112) as usize
    }
    fn narrow(v: u128) -> Self {
        v
    }
}

#[derive(Clone, Debug)]
struct Ranges<K> {
    /// Range starts, ascending; `starts[0] == 0`.
    starts: Vec<K>,
    /// Value index per range (`NONE` = no prefix covers it).
    vals: Vec<u32>,
    /// `index[h]` = first range starting at or after `h << (width - 16)`.
    index: Vec<u32>,
}

impl<K: Key> Ranges<K> {
    /// Flattens (first, last, value) prefixes; identical prefixes must be deduplicated.
    fn build(mut pfx: Vec<(u128, u128, u32)>, max: u128) -> Ranges<K> {
        // Enclosing prefixes first: by start, then the widest.
        pfx.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut starts: Vec<u128> = vec![0];
        let mut vals: Vec<u32> = vec![NONE];
        let mut emit = |start: u128, val: u32| {
            let n = starts.len();
            if starts[n - 1] == start {
                vals[n - 1] = val;
                // The overwrite may have made this range equal to the one before.
                if n >= 2 && vals[n - 2] == val {
                    starts.pop();
                    vals.pop();
                }
            } else if vals[n - 1] != val {
                starts.push(start);
                vals.push(val);
            }
        };
        let mut stack: Vec<(u128, u32)> = Vec::new();
        for (first, last, val) in pfx {
            while let Some(&(end, _)) = stack.last() {
                if end >= first {
                    break;
                }
                stack.pop();
                // end < first <= max, so end + 1 cannot overflow.
                emit(end + 1, stack.last().map_or(NONE, |t| t.1));
            }
            emit(first, val);
            stack.push((last, val));
        }
        while let Some((end, _)) = stack.pop() {
            if end < max {
                emit(end + 1, stack.last().map_or(NONE, |t| t.1));
            }
        }
        let starts: Vec<K> = starts.into_iter().map(K::narrow).collect();
        let mut index = Vec::with_capacity(65537);
        let mut i = 0usize;
        for h in 0..=65536usize {
            while i < starts.len() && starts[i].top16() < h {
                i += 1;
            }
            index.push(i as u32);
        }
        Ranges {
            starts,
            vals,
            index,
        }
    }

    #[inline]
    fn get(&self, key: K) -> u32 {
        let h = key.top16();
        let lo = self.index[h] as usize;
        let hi = self.index[h + 1] as usize;
        // Ranges starting inside this /16 block; the one before `lo` covers the block's start.
        let n = self.starts[lo..hi].partition_point(|s| *s <= key);
        let i = lo + n;
        // starts[0] == 0, so i >= 1 whenever key >= 0.
        self.vals[i.saturating_sub(1)]
    }
}

/// A longest-prefix-match table from CIDRs to values, for both address families.
#[derive(Clone, Debug)]
pub struct PrefixTable<V> {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
    values: Vec<V>,
    /// The CIDR of each value.
    cidrs: Vec<Cidr>,
    prefixes: usize,
}

/// Collects CIDRs before [`PrefixTableBuilder::build`] flattens them.
#[derive(Clone, Debug)]
pub struct PrefixTableBuilder<V> {
    entries: Vec<(Cidr, i32, V)>,
}

impl<V> Default for PrefixTableBuilder<V> {
    fn default() -> Self {
        PrefixTableBuilder {
            entries: Vec::new(),
        }
    }
}

impl<V> PrefixTableBuilder<V> {
    /// Adds a CIDR; when the same CIDR is added twice the higher `rank` wins (the first
    /// added on a tie, so the order of the input files decides, deterministically).
    pub fn insert(&mut self, cidr: Cidr, rank: i32, value: V) {
        self.entries.push((cidr, rank, value));
    }

    /// Number of CIDRs added so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Flattens the CIDRs into the lookup structure.
    pub fn build(self) -> PrefixTable<V> {
        let mut entries: Vec<(usize, Cidr, i32, V)> = self
            .entries
            .into_iter()
            .enumerate()
            .map(|(i, (c, r, v))| (i, c, r, v))
            .collect();
        // Same CIDR: best rank first, then insertion order.
        entries.sort_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)).then(a.0.cmp(&b.0)));
        entries.dedup_by(|later, first| later.1 == first.1);
        let prefixes = entries.len();
        let mut values = Vec::with_capacity(entries.len());
        let mut cidrs = Vec::with_capacity(entries.len());
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (_, cidr, _, v) in entries {
            let id = values.len() as u32;
            values.push(v);
            cidrs.push(cidr);
            let r = (cidr.first(), cidr.last(), id);
            if cidr.addr.is_ipv4() {
                v4.push(r);
            } else {
                v6.push(r);
            }
        }
        PrefixTable {
            v4: Ranges::build(v4, u128::from(u32::MAX)),
            v6: Ranges::build(v6, u128::MAX),
            values,
            cidrs,
            prefixes,
        }
    }
}

impl<V> Default for PrefixTable<V> {
    fn default() -> Self {
        PrefixTableBuilder::default().build()
    }
}

impl<V> PrefixTable<V> {
    /// A builder.
    pub fn builder() -> PrefixTableBuilder<V> {
        PrefixTableBuilder::default()
    }

    /// The value of the longest prefix containing `ip`.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Option<&V> {
        self.values.get(self.id(ip)?)
    }

    /// The longest prefix containing `ip`, with its value.
    pub fn lookup_cidr(&self, ip: IpAddr) -> Option<(Cidr, &V)> {
        let id = self.id(ip)?;
        Some((*self.cidrs.get(id)?, self.values.get(id)?))
    }

    #[inline]
    fn id(&self, ip: IpAddr) -> Option<usize> {
        let id = match ip {
            IpAddr::V4(a) => self.v4.get(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                // ::ffff:a.b.c.d is an IPv4 peer seen through a dual-stack socket.
                Some(v4) => self.v4.get(u32::from(v4)),
                None => self.v6.get(u128::from(a)),
            },
        };
        (id != NONE).then_some(id as usize)
    }

    /// Number of distinct prefixes.
    pub fn len(&self) -> usize {
        self.prefixes
    }

    /// Whether the table has no prefix.
    pub fn is_empty(&self) -> bool {
        self.prefixes == 0
    }

    /// Number of flattened ranges (IPv4, IPv6): the size of the search.
    pub fn ranges(&self) -> (usize, usize) {
        (self.v4.starts.len(), self.v6.starts.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().expect("test cidr")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    #[test]
    fn parses_and_checks_host_bits() {
        assert_eq!(c("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!("10.0.0.1/8".parse::<Cidr>(), Err(CidrError::HostBits));
        assert_eq!(
            Cidr::parse("10.0.0.1/8", false).map(|c| c.to_string()),
            Ok("10.0.0.0/8".into())
        );
        assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::BadLength));
        assert_eq!("10.0.0/8".parse::<Cidr>(), Err(CidrError::BadAddress));
        assert_eq!(c("2600:1f00::/24").len(), 24);
        assert_eq!(c("1.2.3.4").len(), 32);
        assert!(c("0.0.0.0/0").contains(ip("255.255.255.255")));
        assert!(c("::/0").contains(ip("ffff::1")));
        assert!(!c("::/0").contains(ip("1.2.3.4")));
    }

    #[test]
    fn longest_prefix_wins_and_ranks_break_ties() {
        let mut b = PrefixTable::builder();
        b.insert(c("10.0.0.0/8"), 0, "a");
        b.insert(c("10.1.0.0/16"), 0, "b");
        b.insert(c("10.1.2.0/24"), 0, "c");
        b.insert(c("10.1.2.0/24"), 5, "c-better");
        b.insert(c("10.1.2.0/24"), 5, "c-same-rank-later");
        b.insert(c("0.0.0.0/0"), 0, "default");
        b.insert(c("2001:db8::/32"), 0, "v6");
        b.insert(c("2001:db8:1::/48"), 0, "v6-48");
        let t = b.build();
        assert_eq!(t.len(), 6);
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&"c-better"));
        assert_eq!(t.lookup(ip("10.1.3.3")), Some(&"b"));
        assert_eq!(t.lookup(ip("10.2.0.0")), Some(&"a"));
        assert_eq!(t.lookup(ip("11.0.0.0")), Some(&"default"));
        assert_eq!(t.lookup(ip("255.255.255.255")), Some(&"default"));
        assert_eq!(t.lookup(ip("2001:db8:1::5")), Some(&"v6-48"));
        assert_eq!(t.lookup(ip("2001:db8:2::5")), Some(&"v6"));
        assert_eq!(t.lookup(ip("2001:db9::")), None);
        assert_eq!(t.lookup(ip("::ffff:10.1.2.3")), Some(&"c-better"));
    }

    #[test]
    fn empty_and_full_tables() {
        let t: PrefixTable<u8> = PrefixTable::default();
        assert_eq!(t.lookup(ip("1.2.3.4")), None);
        assert_eq!(t.ranges(), (1, 1));
        let mut b = PrefixTable::builder();
        b.insert(c("255.255.255.255/32"), 0, 1u8);
        b.insert(c("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), 0, 2u8);
        let t = b.build();
        assert_eq!(t.lookup(ip("255.255.255.255")), Some(&1));
        assert_eq!(t.lookup(ip("255.255.255.254")), None);
        assert_eq!(
            t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")),
            Some(&2)
        );
    }
}

//! The exporter allow-list: which source addresses may send NetFlow/IPFIX.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A CIDR of the allow-list that did not parse; names the text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("exporter allow-list: {input:?} is not a CIDR: {why}")]
pub struct AllowError {
    /// The entry as given.
    pub input: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// Exporter networks whose datagrams are decoded; empty allows every address.
///
/// UDP sources can be forged, so this keeps out mistakes and casual senders, not an
/// attacker on the path: pair it with network policy that only lets exporters reach
/// the port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    nets: Vec<(IpAddr, u8)>,
}

impl AllowList {
    /// Every address allowed.
    pub fn any() -> AllowList {
        AllowList::default()
    }

    /// Parses comma-separated CIDRs (`10.0.0.0/8,192.0.2.7,2001:db8::/32`); a bare
    /// address is a single host. Bits set after the prefix length are refused (a
    /// typo such as `10.1.2.3/8` would otherwise allow far more than meant).
    pub fn parse(s: &str) -> Result<AllowList, AllowError> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let fail = |why| AllowError {
                input: part.to_owned(),
                why,
            };
            let (a, l) = match part.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (part, None),
            };
            let addr: IpAddr = a.parse().map_err(|_| fail("not an IP address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = match l {
                Some(l) => l
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| fail("bad prefix length"))?,
                None => max,
            };
            if mask(addr, len) != bits(addr) {
                return Err(fail("bits set after the prefix length"));
            }
            nets.push((addr, len));
        }
        if nets.is_empty() {
            return Err(AllowError {
                input: s.to_owned(),
                why: "no network given",
            });
        }
        Ok(AllowList { nets })
    }

    /// Whether no list was given (every address allowed).
    pub fn allows_any(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether datagrams from `ip` are decoded.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.nets.is_empty() {
            return true;
        }
        // An IPv4 exporter seen on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        self.nets
            .iter()
            .any(|(net, len)| net.is_ipv4() == ip.is_ipv4() && mask(ip, *len) == bits(*net))
    }
}

impl FromStr for AllowList {
    type Err = AllowError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AllowList::parse(s)
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nets.is_empty() {
            return f.write_str("any");
        }
        for (i, (a, l)) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}/{l}")?;
        }
        Ok(())
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address with the bits after `len` cleared.
fn mask(ip: IpAddr, len: u8) -> u128 {
    let width = if ip.is_ipv4() { 32 } else { 128 };
    let host = width - u32::from(len);
    if host >= 128 {
        0
    } else {
        (bits(ip) >> host) << host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn networks_and_hosts_of_both_families() {
        let a = AllowList::parse("10.0.0.0/8, 192.0.2.7,2001:db8::/32").expect("parses");
        assert_eq!(a.to_string(), "10.0.0.0/8,192.0.2.7/32,2001:db8::/32");
        for (s, want) in [
            ("10.255.1.2", true),
            ("11.0.0.1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
            ("2001:db8:1::9", true),
            ("2001:db9::1", false),
            ("::ffff:10.1.1.1", true),
            ("::ffff:11.1.1.1", false),
        ] {
            assert_eq!(a.allows(ip(s)), want, "{s}");
        }
        let all = AllowList::parse("0.0.0.0/0,::/0").expect("parses");
        assert!(all.allows(ip("8.8.8.8")) && all.allows(ip("2001:db8::1")));
        assert!(AllowList::any().allows(ip("8.8.8.8")));
        assert!(AllowList::any().allows_any() && !a.allows_any());
    }

    #[test]
    fn bad_entries_are_named() {
        for (s, input, why) in [
            (
                "10.1.2.3/8",
                "10.1.2.3/8",
                "bits set after the prefix length",
            ),
            ("10.0.0.0/33", "10.0.0.0/33", "bad prefix length"),
            ("10.0.0.0/8,router", "router", "not an IP address"),
            ("10.0.0.0/é", "10.0.0.0/é", "bad prefix length"),
            (" , ", " , ", "no network given"),
        ] {
            assert_eq!(
                AllowList::parse(s),
                Err(AllowError {
                    input: input.into(),
                    why
                }),
                "{s}"
            );
        }
        assert_eq!(
            AllowList::parse("10.1.2.3/8")
                .expect_err("host bits")
                .to_string(),
            "exporter allow-list: \"10.1.2.3/8\" is not a CIDR: bits set after the prefix length"
        );
    }
}

//! Random loss towards (or from) one peer.

use std::net::IpAddr;

use crate::{Direction, Error, IptRule, NftTable, check_netns, nft_hook, nft_match, unique};

/// Which packet filter installs the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// nftables: `numgen random mod 1000000 < P drop` in a table of its own.
    ///
    /// A packet this namespace itself sends and a rule drops in the output hook makes
    /// the sender's `send` fail with EPERM: to lose packets silently, as a network
    /// does, drop them where they arrive (`Direction::FromPeer` in the receiver).
    Nft,
    /// iptables / ip6tables: `-m statistic --mode random --probability P -j DROP`.
    Iptables,
}

#[derive(Debug)]
enum Installed {
    Nft(#[allow(dead_code)] NftTable),
    Iptables(#[allow(dead_code)] IptRule),
}

/// A loss rule in a namespace; removed on drop.
#[derive(Debug)]
pub struct LossRule {
    #[allow(dead_code)]
    installed: Installed,
    probability: f64,
}

impl LossRule {
    /// Drops each packet to (`ToPeer`) or from (`FromPeer`) `peer` in namespace `ns`
    /// with `probability` (0..=1).
    pub fn add(
        ns: &str,
        peer: IpAddr,
        dir: Direction,
        probability: f64,
        backend: Backend,
    ) -> Result<LossRule, Error> {
        check_netns(ns)?;
        if !(0.0..=1.0).contains(&probability) {
            return Err(Error::Value {
                what: "loss probability",
                value: probability.to_string(),
                why: "must be within 0..=1",
            });
        }
        let installed = match backend {
            Backend::Nft => {
                let threshold = (probability * 1_000_000.0).round() as u64;
                let rule = format!(
                    "{} numgen random mod 1000000 < {threshold} counter drop",
                    nft_match(peer, dir)
                );
                Installed::Nft(NftTable::create(
                    ns,
                    unique("loss"),
                    "c",
                    nft_hook(dir),
                    -10,
                    &rule,
                )?)
            }
            Backend::Iptables => {
                let rest: Vec<String> = [
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &format!("{probability:.6}"),
                    "-j",
                    "DROP",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                Installed::Iptables(IptRule::insert(ns, peer, dir, "loss", &rest)?)
            }
        };
        Ok(LossRule {
            installed,
            probability,
        })
    }

    /// The drop probability.
    pub fn probability(&self) -> f64 {
        self.probability
    }
}

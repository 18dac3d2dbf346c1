//! The addresses of this node (the observer): they decide which end of a connection is local.

use std::collections::HashSet;
use std::net::IpAddr;

/// Addresses configured on this network namespace's interfaces.
pub fn local_addresses() -> HashSet<IpAddr> {
    let mut set = HashSet::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(s) = a.address else { continue };
            if let Some(v4) = s.as_sockaddr_in() {
                set.insert(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = s.as_sockaddr_in6() {
                set.insert(IpAddr::V6(v6.ip()));
            }
        }
    }
    set
}

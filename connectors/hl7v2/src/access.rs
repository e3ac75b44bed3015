//! Source-address networks for the MLLP listener's `allow_from` and `reserved_for`: `10.0.0.0/8`,
//! `127.0.0.1` (one host), `fd00::/8`, `::1`. IPv4 peers seen through an IPv6 socket
//! (`::ffff:10.1.2.3`) are matched as IPv4.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One network: an address and a prefix length (32 / 128 for a single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

/// The address as a 128-bit number and its width (32 or 128).
fn bits(ip: IpAddr) -> (u128, u8) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// The mask of the `prefix` leading bits of a `width`-bit address.
fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        (u128::MAX << (128 - u32::from(prefix))) >> (128 - u32::from(width))
    }
}

impl Network {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, width) = bits(self.addr);
        let (ip, ip_width) = bits(ip);
        width == ip_width && (ip & mask(self.prefix, width)) == net
    }

    /// Whether every address of `other` is in this network.
    pub fn covers(&self, other: &Network) -> bool {
        self.prefix <= other.prefix && self.contains(other.addr)
    }

    /// Whether `ip` is in one of `networks`.
    pub fn any_contains(networks: &[Network], ip: IpAddr) -> bool {
        networks.iter().any(|n| n.contains(ip))
    }
}

impl FromStr for Network {
    type Err = String;

    /// `address` or `address/prefix`; host bits beyond the prefix must be zero (`10.1.0.0/8` is
    /// refused: it is a typo for `10.0.0.0/8` or for `10.1.0.0/16`).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or network (like 10.0.0.0/8)"))?;
        let addr = addr.to_canonical();
        let (value, width) = bits(addr);
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {width}"))?,
        };
        if value & !mask(prefix, width) & (u128::MAX >> (128 - u32::from(width))) != 0 {
            return Err(format!(
                "`{s}` has address bits set beyond its /{prefix} prefix"
            ));
        }
        Ok(Network { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (_, width) = bits(self.addr);
        if self.prefix == width {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Network {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_and_hosts_match_their_addresses_only() {
        let ten = net("10.0.0.0/8");
        assert!(ten.contains(ip("10.200.3.4")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(
            ten.contains(ip("::ffff:10.1.2.3")),
            "IPv4 through an IPv6 socket"
        );
        let host = net("127.0.0.1");
        assert!(host.contains(ip("127.0.0.1")) && !host.contains(ip("127.0.0.2")));
        assert!(net("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(!net("0.0.0.0/0").contains(ip("::1")), "families do not mix");
        let v6 = net("fd00::/8");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(net("::1").contains(ip("::1")));
        assert!(ten.covers(&net("10.1.0.0/16")) && !net("10.1.0.0/16").covers(&ten));
        assert_eq!(host.to_string(), "127.0.0.1");
        assert_eq!(ten.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn malformed_networks_are_refused_with_a_reason() {
        for bad in ["10.1.0.0/8", "10.0.0.0/33", "example.org", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
        assert!("fd00::1/8".parse::<Network>().is_err());
    }
}

//! The one outbound-address guard: where a tenant's URL may lead the
//! control plane. Public addresses only, unless the operator allows some
//! networks: loopback, private, link-local (the cloud's metadata service),
//! carrier-grade NAT, multicast, documentation and reserved ranges — and
//! IPv6 addresses that carry one of those IPv4 addresses — are refused.
//! The decision is made on the address actually connected to: callers
//! connect only to addresses [`Guard::resolve`] returned (the webhook
//! sender through its resolver, git by pinning them), so a name that
//! resolves elsewhere later (DNS rebinding) reaches nothing.
//!
//! Imports nothing of the kernel.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::LazyLock,
};

use ipnet::IpNet;
use url::Host;

/// Networks refused, with what they are.
static INTERNAL: LazyLock<Vec<(IpNet, &'static str)>> = LazyLock::new(|| {
    [
        ("0.0.0.0/8", "an unspecified"),
        ("10.0.0.0/8", "a private"),
        ("100.64.0.0/10", "a carrier-grade NAT"),
        ("127.0.0.0/8", "a loopback"),
        ("169.254.0.0/16", "a link-local"),
        ("172.16.0.0/12", "a private"),
        ("192.0.0.0/24", "an IETF protocol"),
        ("192.0.2.0/24", "a documentation"),
        ("192.168.0.0/16", "a private"),
        ("198.18.0.0/15", "a benchmarking"),
        ("198.51.100.0/24", "a documentation"),
        ("203.0.113.0/24", "a documentation"),
        ("224.0.0.0/4", "a multicast"),
        ("240.0.0.0/4", "a reserved"),
        ("::/128", "an unspecified"),
        ("::1/128", "a loopback"),
        // IPv4-compatible (deprecated): where an old stack routes them.
        ("::/96", "an IPv4-compatible"),
        ("64:ff9b:1::/48", "a local-use NAT64"),
        ("2001:db8::/32", "a documentation"),
        ("fc00::/7", "a private (unique local)"),
        ("fe80::/10", "a link-local"),
        ("fec0::/10", "a site-local"),
        ("ff00::/8", "a multicast"),
    ]
    .into_iter()
    .filter_map(|(net, kind)| Some((net.parse().ok()?, kind)))
    .collect()
});

/// The IPv4 address an IPv6 one carries (IPv4-mapped, NAT64's well-known
/// prefix, 6to4), which is where it really goes.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let octets = ip.octets();
    let segments = ip.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]));
    }
    if segments[0] == 0x2002 {
        return Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5]));
    }
    None
}

/// Why a destination is refused, in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// "a loopback address (127.0.0.1)".
    #[error("points at {0}")]
    Internal(String),
    #[error("names a host that cannot be resolved")]
    Unresolvable,
    #[error("names a host with no address")]
    NoAddress,
}

/// The rule, with the operator's exceptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    allowed: Vec<IpNet>,
}

impl Guard {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// Why `ip` is refused ("a loopback address (127.0.0.1)"), or `None`
    /// when it may be reached.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        let real = Self::real(ip);
        if self.allowed.iter().any(|net| net.contains(&ip) || net.contains(&real)) {
            return None;
        }
        INTERNAL
            .iter()
            .find(|(net, _)| net.contains(&real))
            .map(|(_, kind)| format!("{kind} address ({ip})"))
    }

    /// Where `ip` really goes: the IPv4 address an IPv6 one carries
    /// (IPv4-mapped, NAT64, 6to4), else itself.
    pub fn real(ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        }
    }

    /// Whether the operator allowed `ip` by name (one of the networks
    /// given, as written or where it really goes), whatever range it is in.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let real = Self::real(ip);
        self.allowed.iter().any(|net| net.contains(&ip) || net.contains(&real))
    }

    /// Every address `host` names (resolved for `port`), when the guard
    /// allows all of them: a name with one refused address is refused
    /// whole, so that which one a client picks never matters.
    pub async fn resolve(&self, host: &Host<&str>, port: u16) -> Result<Vec<IpAddr>, Refused> {
        let addresses: Vec<IpAddr> = match host {
            Host::Ipv4(ip) => vec![IpAddr::V4(*ip)],
            Host::Ipv6(ip) => vec![IpAddr::V6(*ip)],
            Host::Domain(name) => tokio::net::lookup_host((*name, port))
                .await
                .map_err(|_| Refused::Unresolvable)?
                .map(|addr| addr.ip())
                .collect(),
        };
        if let Some(why) = addresses.iter().find_map(|ip| self.refusal(*ip)) {
            // A name's address is not told: that would map the private
            // side's names for whoever asks.
            return Err(Refused::Internal(match host {
                Host::Domain(_) => why.split(" (").next().unwrap_or(&why).to_owned(),
                Host::Ipv4(_) | Host::Ipv6(_) => why,
            }));
        }
        if addresses.is_empty() {
            return Err(Refused::NoAddress);
        }
        Ok(addresses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_disguised_addresses_are_refused() {
        let guard = Guard::default();
        for refused in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "::7f00:1",
            "64:ff9b:1::a9fe:a9fe",
            "fec0::1",
        ] {
            let ip: IpAddr = refused.parse().unwrap();
            assert!(guard.refusal(ip).is_some(), "{refused} must be refused");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert_eq!(guard.refusal(public.parse().unwrap()), None, "{public}");
        }
        let allowing = Guard::new(vec!["127.0.0.2/32".parse().unwrap()]);
        assert_eq!(allowing.refusal("127.0.0.2".parse().unwrap()), None);
        assert!(allowing.refusal("127.0.0.1".parse().unwrap()).is_some());
    }

    #[tokio::test]
    async fn a_name_is_refused_when_any_of_its_addresses_is() {
        let guard = Guard::default();
        let refused = guard.resolve(&Host::Domain("localhost"), 443).await.unwrap_err();
        assert!(
            matches!(&refused, Refused::Internal(why) if why.contains("loopback")),
            "{refused}"
        );
        let literal = guard
            .resolve(&Host::Ipv4(Ipv4Addr::new(169, 254, 169, 254)), 80)
            .await
            .unwrap_err();
        assert_eq!(literal.to_string(), "points at a link-local address (169.254.169.254)");
        let public = guard.resolve(&Host::Ipv4(Ipv4Addr::new(1, 1, 1, 1)), 443).await;
        assert_eq!(public, Ok(vec![IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1))]));
    }
}

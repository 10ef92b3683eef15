//! The per-client rate limit of the REST port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The per-client rate limit. IPv6 clients are counted by their /64 (one
/// host usually holds a whole /64), and clients idle long enough to be
/// back at a full burst are forgotten, so memory follows the clients of
/// the last moments, not every client ever seen.
pub struct ClientLimiter(DefaultKeyedRateLimiter<IpAddr>);

impl ClientLimiter {
    pub fn new(quota: Quota) -> Self {
        Self(RateLimiter::keyed(quota))
    }

    /// Whether `client` may make one more request now.
    pub fn check(&self, client: IpAddr) -> bool {
        let key = match client {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX)))
            }
            IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
            v4 => v4,
        };
        self.0.check_key(&key).is_ok()
    }

    /// Forgets the clients that have been idle long enough.
    pub fn prune(&self) {
        self.0.retain_recent();
        self.0.shrink_to_fit();
    }

    /// How many clients are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use std::{num::NonZeroU32, time::Duration};

    use super::*;

    #[test]
    fn the_limiter_forgets_idle_clients_and_counts_an_ipv6_host_by_its_64() {
        let limiter = ClientLimiter::new(Quota::per_second(NonZeroU32::new(1000).unwrap()));
        for i in 0..10_000u32 {
            assert!(limiter.check(IpAddr::V4(Ipv4Addr::from(i))));
        }
        assert_eq!(limiter.len(), 10_000);
        std::thread::sleep(Duration::from_millis(50));
        limiter.prune();
        assert_eq!(limiter.len(), 0, "clients back at a full burst are forgotten");

        let strict = ClientLimiter::new(Quota::per_hour(NonZeroU32::MIN));
        assert!(strict.check("2001:db8::1".parse().unwrap()));
        assert!(!strict.check("2001:db8::ffff:2".parse().unwrap()), "the same /64");
        assert!(strict.check("2001:db8:0:1::1".parse().unwrap()), "another /64");
        strict.prune();
        assert_eq!(strict.len(), 2, "clients still limited are kept");
    }
}

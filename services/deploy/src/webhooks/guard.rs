//! Where a webhook may be delivered: public addresses only, unless the
//! operator allows some networks (`DEPLOY_WEBHOOK_ALLOWED_NETWORKS`). A
//! tenant's URL must not reach the control plane, the cloud's metadata
//! service or anything else on the private side: the check runs on every
//! address a name resolves to, when subscribing and again at every attempt
//! (the resolver the sender connects through drops refused addresses, so a
//! name that later resolves elsewhere — DNS rebinding — reaches nothing).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, LazyLock},
};

use ipnet::IpNet;
use url::{Host, Url};

/// Networks no webhook is sent to, with what they are.
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
        ("2001:db8::/32", "a documentation"),
        ("fc00::/7", "a private (unique local)"),
        ("fe80::/10", "a link-local"),
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

/// The operator's exceptions to the rule.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allowed: Vec<IpNet>,
}

impl Guard {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed }
    }

    /// Why `ip` is refused ("a loopback address (127.0.0.1)"), or `None`
    /// when a webhook may go there.
    pub fn refusal(&self, ip: IpAddr) -> Option<String> {
        let real = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        if self.allowed.iter().any(|net| net.contains(&ip) || net.contains(&real)) {
            return None;
        }
        INTERNAL
            .iter()
            .find(|(net, _)| net.contains(&real))
            .map(|(_, kind)| format!("{kind} address ({ip})"))
    }

    /// Checks a URL a webhook is subscribed to: http(s), a host, no
    /// credentials, and every address it names allowed. The error says
    /// what to change.
    pub async fn check_url(&self, raw: &str) -> Result<Url, String> {
        let url = Url::parse(raw).map_err(|err| format!("is not a URL ({err})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must start with https:// (or http://)".to_owned());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not hold a user name or password; check the capsule-signature header instead".to_owned());
        }
        if url.fragment().is_some() {
            return Err("must not have a #fragment".to_owned());
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses: Vec<IpAddr> = match url.host() {
            None => return Err("must name a host".to_owned()),
            Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
            Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
            Some(Host::Domain(name)) => tokio::net::lookup_host((name, port))
                .await
                .map_err(|err| format!("names a host that cannot be resolved ({err})"))?
                .map(|addr| addr.ip())
                .collect(),
        };
        if let Some(why) = addresses.iter().find_map(|ip| self.refusal(*ip)) {
            return Err(format!(
                "points at {why}: webhooks are delivered to public addresses only \
                 (an operator may allow a network with DEPLOY_WEBHOOK_ALLOWED_NETWORKS)"
            ));
        }
        if addresses.is_empty() {
            return Err("names a host with no address".to_owned());
        }
        Ok(url)
    }

    /// Why a delivery to `url` may not be attempted, checked before each
    /// attempt: an address written in the URL is not resolved, so the
    /// resolver cannot refuse it.
    pub fn literal_refusal(&self, url: &Url) -> Option<String> {
        match url.host()? {
            Host::Ipv4(ip) => self.refusal(IpAddr::V4(ip)),
            Host::Ipv6(ip) => self.refusal(IpAddr::V6(ip)),
            Host::Domain(_) => None,
        }
    }
}

/// The sender's resolver: a name's refused addresses are dropped, and a
/// name with nothing left fails to resolve.
#[derive(Debug, Clone)]
pub struct GuardedResolver(pub Arc<Guard>);

#[derive(Debug, thiserror::Error)]
#[error("{0}: webhooks are delivered to public addresses only")]
struct Refused(String);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let mut why = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match guard.refusal(addr.ip()) {
                    Some(refusal) => {
                        why = Some(refusal);
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let why = why.unwrap_or_else(|| format!("{} has no address", name.as_str()));
                return Err(Box::new(Refused(format!("{} resolves to {why}", name.as_str())))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
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
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
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
    async fn subscription_urls_are_checked_before_anything_is_sent() {
        let guard = Guard::default();
        for (url, says) in [
            ("ftp://example.com/", "https://"),
            ("https://user:pw@example.com/", "user name"),
            ("http://127.0.0.1:8080/hook", "loopback"),
            ("http://[::1]/hook", "loopback"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://localhost:9000/", "loopback"),
            ("not a url", "not a URL"),
        ] {
            let err = guard.check_url(url).await.unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
        assert!(guard.check_url("https://93.184.216.34/hooks").await.is_ok());
    }
}

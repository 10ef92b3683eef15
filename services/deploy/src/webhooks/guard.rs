//! Where a webhook may be delivered: wherever the kernel's outbound guard
//! allows, with `DEPLOY_WEBHOOK_ALLOWED_NETWORKS` as the operator's
//! exceptions. The check runs on every address a name resolves to, when
//! subscribing and again at every attempt (the resolver the sender
//! connects through drops refused addresses, so a name that later resolves
//! elsewhere — DNS rebinding — reaches nothing).

use std::{net::SocketAddr, sync::Arc};

use capsule::guard::Guard;
use url::{Host, Url};

/// Checks a URL a webhook is subscribed to: http(s), a host, no
/// credentials, and every address it names allowed. The error says what
/// to change.
pub async fn check_url(guard: &Guard, raw: &str) -> Result<Url, String> {
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
    let host = url.host().ok_or_else(|| "must name a host".to_owned())?;
    guard.resolve(&host, port).await.map_err(|refused| match refused {
        capsule::guard::Refused::Internal(_) => format!(
            "{refused}: webhooks are delivered to public addresses only \
             (an operator may allow a network with DEPLOY_WEBHOOK_ALLOWED_NETWORKS)"
        ),
        other => other.to_string(),
    })?;
    Ok(url)
}

/// Why a delivery to `url` may not be attempted, checked before each
/// attempt: an address written in the URL is not resolved, so the
/// resolver cannot refuse it.
pub fn literal_refusal(guard: &Guard, url: &Url) -> Option<String> {
    match url.host()? {
        Host::Ipv4(ip) => guard.refusal(ip.into()),
        Host::Ipv6(ip) => guard.refusal(ip.into()),
        Host::Domain(_) => None,
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
            let err = check_url(&guard, url).await.unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
        assert!(check_url(&guard, "https://93.184.216.34/hooks").await.is_ok());
    }
}

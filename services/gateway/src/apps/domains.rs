//! Custom domains at the gateway: which app each serves, the certificate
//! it is served with (chosen by SNI on the apps' HTTPS port), and the
//! ACME challenges of open orders — HTTP-01 answers on the HTTP port,
//! TLS-ALPN-01 certificates (RFC 8737) on the HTTPS port. All of it comes
//! whole with each route table, like the hosts.

use std::{collections::HashMap, sync::Arc};

use capsule::proto::deploy::v1 as pb;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use tokio_rustls::rustls::{crypto::ring::sign::any_supported_type, sign::CertifiedKey};

/// A custom domain as served.
#[derive(Debug)]
pub struct Served {
    /// The host label of the app it serves; empty while nothing is live.
    pub host: String,
    pub redirect_https: bool,
    pub hsts_max_age: u32,
    pub certificate: Arc<CertifiedKey>,
}

/// Domains, wildcards and challenges, swapped whole.
#[derive(Debug, Default)]
pub struct Domains {
    exact: HashMap<String, Arc<Served>>,
    /// "*.example.com" under "example.com".
    wildcard: HashMap<String, Arc<Served>>,
    /// HTTP-01: token to the name it is for and its key authorization.
    http01: HashMap<String, (String, String)>,
    /// TLS-ALPN-01: name to its challenge certificate.
    alpn: HashMap<String, Arc<CertifiedKey>>,
    /// The platform's own `*.<apps domain>`, for every app host.
    apps: Option<Arc<CertifiedKey>>,
}

impl Domains {
    /// The table a route table describes; what cannot be used (a
    /// certificate that does not parse) is left out and logged.
    /// A domain or challenge under the apps' domain (but the platform's
    /// own wildcard) is left out: whatever the deploy service was told,
    /// no tenant answers for an app's host.
    pub fn from_table(domains: Vec<pb::DomainRoute>, challenges: Vec<pb::AcmeChallenge>, apps_domain: &str) -> Self {
        let mut table = Self::default();
        let apps_wildcard = format!("*.{apps_domain}");
        let platforms = |name: &str| {
            let name = name.strip_prefix("*.").unwrap_or(name);
            name == apps_domain || name.ends_with(&format!(".{apps_domain}"))
        };
        for domain in domains {
            let certificate = match certified(&domain.certificate_pem, &domain.private_key_pem) {
                Ok(certificate) => Arc::new(certificate),
                Err(err) => {
                    tracing::warn!(domain = %domain.domain, error = %err, "a domain's certificate cannot be used");
                    continue;
                }
            };
            if domain.domain == apps_wildcard {
                table.apps = Some(certificate);
                continue;
            }
            if platforms(&domain.domain) {
                tracing::warn!(domain = %domain.domain, "a custom domain under the apps' domain is not served");
                continue;
            }
            let served = Arc::new(Served {
                host: domain.host,
                redirect_https: domain.redirect_https,
                hsts_max_age: domain.hsts_max_age_seconds,
                certificate,
            });
            match domain.domain.strip_prefix("*.") {
                Some(zone) => table.wildcard.insert(zone.to_owned(), served),
                None => table.exact.insert(domain.domain, served),
            };
        }
        for challenge in challenges {
            if platforms(&challenge.domain) && format!("*.{}", challenge.domain) != apps_wildcard {
                continue;
            }
            match challenge.kind() {
                pb::DomainChallenge::Http01 => {
                    table
                        .http01
                        .insert(challenge.token, (challenge.domain, challenge.key_authorization));
                }
                pb::DomainChallenge::TlsAlpn01 => {
                    match alpn_certificate(&challenge.domain, &challenge.key_authorization) {
                        Ok(certificate) => {
                            table.alpn.insert(challenge.domain, Arc::new(certificate));
                        }
                        Err(err) => {
                            tracing::warn!(domain = %challenge.domain, error = %err, "cannot make a TLS-ALPN-01 certificate")
                        }
                    }
                }
                pb::DomainChallenge::Dns01 | pb::DomainChallenge::Unspecified => {}
            }
        }
        table
    }

    /// The domain `name` (lowercase, no port) is served as: itself, or the
    /// wildcard one label above it.
    pub fn find(&self, name: &str) -> Option<&Arc<Served>> {
        self.exact
            .get(name)
            .or_else(|| self.wildcard.get(name.split_once('.')?.1))
    }

    /// The apps' own wildcard certificate, when the platform has one.
    pub fn apps_certificate(&self) -> Option<&Arc<CertifiedKey>> {
        self.apps.as_ref()
    }

    /// The TLS-ALPN-01 challenge certificate for `name`.
    pub fn alpn(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        self.alpn.get(name)
    }

    /// The key authorization of an HTTP-01 token, asked for at `name`:
    /// only at the name it validates (a redirect from elsewhere to the
    /// platform proves nothing of that elsewhere).
    pub fn http01(&self, token: &str, name: &str) -> Option<&str> {
        self.http01
            .get(token)
            .filter(|(domain, _)| domain == name)
            .map(|(_, answer)| answer.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.wildcard.is_empty()
            && self.http01.is_empty()
            && self.alpn.is_empty()
            && self.apps.is_none()
    }
}

/// A chain and its key as rustls serves them.
pub(crate) fn certified(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("the chain: {err}"))?;
    if chain.is_empty() {
        return Err("the chain holds no certificate".to_owned());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|err| format!("the key: {err}"))?;
    let key = any_supported_type(&key).map_err(|err| format!("the key: {err}"))?;
    Ok(CertifiedKey::new(chain, key))
}

/// The self-signed certificate TLS-ALPN-01 asks for: `name` as its only
/// name, and the SHA-256 of the key authorization in the critical
/// acmeIdentifier extension.
fn alpn_certificate(name: &str, key_authorization: &str) -> Result<CertifiedKey, String> {
    let digest = Sha256::digest(key_authorization.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|err| err.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate().map_err(|err| err.to_string())?;
    let certificate = params.self_signed(&key).map_err(|err| err.to_string())?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|err| err.to_owned())?;
    let signing = any_supported_type(&key_der).map_err(|err| err.to_string())?;
    Ok(CertifiedKey::new(vec![certificate.der().clone()], signing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(domain: &str, token: &str) -> pb::AcmeChallenge {
        pb::AcmeChallenge {
            domain: domain.to_owned(),
            kind: pb::DomainChallenge::Http01 as i32,
            token: token.to_owned(),
            key_authorization: format!("{token}.thumbprint"),
        }
    }

    #[test]
    fn a_challenge_is_answered_only_at_its_name_and_never_under_the_apps_domain() {
        let table = Domains::from_table(
            Vec::new(),
            vec![
                challenge("shop.example.com", "t1"),
                challenge("victim.apps.example", "t2"),
            ],
            "apps.example",
        );
        assert_eq!(table.http01("t1", "shop.example.com"), Some("t1.thumbprint"));
        // A redirect from a name the tenant does not hold proves nothing.
        assert_eq!(table.http01("t1", "example.com"), None);
        assert_eq!(table.http01("t2", "victim.apps.example"), None);
    }
}

//! The apps' HTTPS port picks each connection's certificate by SNI.

use std::sync::Arc;

use tokio_rustls::rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// The ALPN protocol of TLS-ALPN-01 validation.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Picks the certificate by SNI: a TLS-ALPN-01 challenge's when the CA
/// asks for `acme-tls/1`, else the custom domain's, else for an app's host
/// the apps' wildcard certificate the platform ordered, else the fallback
/// (the gateway's own, `CAPSULE_TLS_*`).
pub struct Resolver {
    pub apps: Arc<super::Apps>,
    pub fallback: Option<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let domains = self.apps.domains();
        let challenge = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|protocol| protocol == ACME_TLS_ALPN));
        if challenge {
            return domains.alpn(name.as_deref()?).cloned();
        }
        let name = name.as_deref();
        name.and_then(|name| domains.find(name))
            .map(|served| served.certificate.clone())
            .or_else(|| {
                name.and_then(|name| self.apps.host_of(name))
                    .and(domains.apps_certificate().cloned())
            })
            .or_else(|| self.fallback.clone())
    }
}

/// The gateway's own certificate, for names that are no custom domain.
pub fn fallback(tls: Option<&capsule::tls::ServerTls>) -> anyhow::Result<Option<Arc<CertifiedKey>>> {
    let Some(tls) = tls else { return Ok(None) };
    let chain = String::from_utf8_lossy(tls.cert()).into_owned();
    let key = String::from_utf8_lossy(tls.key()).into_owned();
    Ok(Some(Arc::new(
        super::domains::certified(&chain, &key).map_err(anyhow::Error::msg)?,
    )))
}

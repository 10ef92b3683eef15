//! The TLS files of a process (`CAPSULE_TLS_*`), read and parsed once at
//! start-up; [`crate::tls`] builds the server and client configs from them.

use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::{ConfigError, Source};

pub const CERT_FILE: &str = "CAPSULE_TLS_CERT_FILE";
pub const KEY_FILE: &str = "CAPSULE_TLS_KEY_FILE";
pub const CLIENT_CA_FILE: &str = "CAPSULE_TLS_CLIENT_CA_FILE";
pub const CA_FILE: &str = "CAPSULE_TLS_CA_FILE";

/// The server side: certificate, key, and the CA of required client
/// certificates.
#[derive(Clone)]
pub struct ServerTls {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("key", &"<redacted>")
            .field("mutual", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

/// The contents of the file `variable` names, if it is set.
pub(crate) fn read(source: &dyn Source, variable: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    let Some(path) = source.get(variable) else {
        return Ok(None);
    };
    std::fs::read(&path).map(Some).map_err(|err| ConfigError {
        variable: variable.to_owned(),
        value: format!("{path:?}"),
        reason: format!("the file cannot be read: {err}"),
    })
}

/// A TLS file that cannot be used.
pub(crate) fn invalid(variable: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        variable: variable.to_owned(),
        value: "<file>".to_owned(),
        reason: reason.into(),
    }
}

impl ServerTls {
    /// `None` when no certificate is configured (plain HTTP/2 and HTTP/1.1).
    pub fn from_source(source: &dyn Source) -> Result<Option<Self>, ConfigError> {
        let (cert, key) = match (read(source, CERT_FILE)?, read(source, KEY_FILE)?) {
            (None, None) => {
                if source.get(CLIENT_CA_FILE).is_some() {
                    return Err(invalid(
                        CLIENT_CA_FILE,
                        format!("requiring client certificates needs {CERT_FILE} and {KEY_FILE} too"),
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => return Err(invalid(KEY_FILE, format!("is required with {CERT_FILE}"))),
            (None, Some(_)) => return Err(invalid(CERT_FILE, format!("is required with {KEY_FILE}"))),
            (Some(cert), Some(key)) => (cert, key),
        };
        let tls = Self {
            cert,
            key,
            client_ca: read(source, CLIENT_CA_FILE)?,
        };
        // Parse now, so a bad file fails start-up, not the first handshake.
        tls.parsed()?;
        Ok(Some(tls))
    }

    /// The certificate chain and key, parsed.
    pub fn parsed(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError> {
        let certs = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| invalid(CERT_FILE, format!("not a PEM certificate chain: {err}")))?;
        if certs.is_empty() {
            return Err(invalid(CERT_FILE, "holds no certificate"));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|err| invalid(KEY_FILE, format!("not a PEM private key: {err}")))?;
        Ok((certs, key))
    }

    /// The PEM certificate chain.
    pub fn cert(&self) -> &[u8] {
        &self.cert
    }

    /// The PEM private key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The PEM CA of required client certificates, if any.
    pub fn client_ca(&self) -> Option<&[u8]> {
        self.client_ca.as_deref()
    }
}

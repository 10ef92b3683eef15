//! Where certificates come from, and which names no tenant may claim.
//!
//! | variable | default |
//! |---|---|
//! | `DEPLOY_ACME_DIRECTORY` | Let's Encrypt's (`https://acme-v02.api.letsencrypt.org/directory`): the ACME directory certificates are ordered from; `off` orders none (domains stay pending) |
//! | `DEPLOY_ACME_EMAIL` | unset: the account's contact address |
//! | `DEPLOY_ACME_EAB_KID`, `DEPLOY_ACME_EAB_HMAC_KEY` | unset: external account binding, for CAs that require it (the key base64url, as the CA gives it) |
//! | `DEPLOY_ACME_CA_FILE` | unset: a PEM root that signed the directory's own HTTPS certificate, trusted instead of the system's (a private or test CA) |
//! | `DEPLOY_ACME_DNS_HOOK` | unset: an absolute path to a program that writes DNS-01 TXT records (see `hook.rs`); without it, wildcard domains are refused |
//! | `DEPLOY_ACME_RENEW_BEFORE_DAYS` | `30`: a certificate is renewed this long before it expires |
//! | `DEPLOY_ACME_CHALLENGE_DELAY_MS` | `2500`: the wait between publishing a challenge and asking the CA to check it, so that every gateway has it |
//! | `GATEWAY_APPS_DOMAIN` | `localhost`, as the gateway reads it: the apps' domain, which no custom domain may fall under, and the CNAME target |
//! | `DEPLOY_RESERVED_DOMAINS` | unset: the platform's own names, comma-separated (the API's host, say); no custom domain may equal, cover or fall under one |
//! | `DEPLOY_GATEWAY_ADDRESSES` | unset: the gateways' public addresses, comma-separated, given as A/AAAA records for apex domains |

use std::{net::IpAddr, path::PathBuf, time::Duration};

use base64::Engine;
use capsule::config::{ConfigError, Source, parse_or, positive};

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// None: no certificate is ordered.
    pub directory: Option<String>,
    pub email: Option<String>,
    /// The key id and the HMAC key's bytes.
    pub eab: Option<(String, Vec<u8>)>,
    pub ca_file: Option<PathBuf>,
    pub dns_hook: Option<PathBuf>,
    pub renew_before: Duration,
    pub challenge_delay: Duration,
    pub apps_domain: String,
    pub reserved: Vec<String>,
    pub gateway_addresses: Vec<IpAddr>,
}

impl AcmeConfig {
    pub fn from_source(source: &dyn Source) -> Result<Self, ConfigError> {
        let directory = match source.get("DEPLOY_ACME_DIRECTORY").map(|raw| raw.trim().to_owned()) {
            None => Some(LETS_ENCRYPT.to_owned()),
            Some(off) if off.eq_ignore_ascii_case("off") => None,
            Some(url) if url.starts_with("https://") => Some(url),
            Some(url) => {
                return Err(ConfigError::invalid(
                    "DEPLOY_ACME_DIRECTORY",
                    &url,
                    "expected an https:// ACME directory URL, or off",
                ));
            }
        };
        let eab = match (
            source.get("DEPLOY_ACME_EAB_KID"),
            source.get("DEPLOY_ACME_EAB_HMAC_KEY"),
        ) {
            (None, None) => None,
            (Some(kid), Some(key)) => {
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(key.trim().trim_end_matches('='))
                    .map_err(|_| {
                        ConfigError::invalid(
                            "DEPLOY_ACME_EAB_HMAC_KEY",
                            "<redacted>",
                            "expected the base64url HMAC key the CA gave",
                        )
                    })?;
                Some((kid, bytes))
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "DEPLOY_ACME_EAB_HMAC_KEY",
                    "",
                    "is required with DEPLOY_ACME_EAB_KID",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "DEPLOY_ACME_EAB_KID",
                    "",
                    "is required with DEPLOY_ACME_EAB_HMAC_KEY",
                ));
            }
        };
        let absolute = |variable: &str| -> Result<Option<PathBuf>, ConfigError> {
            match source.get(variable) {
                None => Ok(None),
                Some(path) if path.starts_with('/') => Ok(Some(PathBuf::from(path))),
                Some(path) => Err(ConfigError::invalid(variable, &path, "expected an absolute path")),
            }
        };
        let names = |variable: &str| -> Vec<String> {
            source
                .get(variable)
                .unwrap_or_default()
                .split(',')
                .map(|name| name.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|name| !name.is_empty())
                .collect()
        };
        let gateway_addresses = names("DEPLOY_GATEWAY_ADDRESSES")
            .iter()
            .map(|address| {
                address.parse().map_err(|_| {
                    ConfigError::invalid(
                        "DEPLOY_GATEWAY_ADDRESSES",
                        address,
                        "expected IP addresses such as 203.0.113.7, comma-separated",
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let apps_domain = source
            .get("GATEWAY_APPS_DOMAIN")
            .unwrap_or_else(|| "localhost".to_owned())
            .trim()
            .trim_matches('.')
            .to_ascii_lowercase();
        Ok(Self {
            directory,
            email: source.get("DEPLOY_ACME_EMAIL"),
            eab,
            ca_file: absolute("DEPLOY_ACME_CA_FILE")?,
            dns_hook: absolute("DEPLOY_ACME_DNS_HOOK")?,
            renew_before: Duration::from_secs(positive(source, "DEPLOY_ACME_RENEW_BEFORE_DAYS", 30u64)? * 24 * 3600),
            challenge_delay: Duration::from_millis(parse_or(
                source,
                "DEPLOY_ACME_CHALLENGE_DELAY_MS",
                2500,
                "expected a whole number of milliseconds",
            )?),
            apps_domain,
            reserved: names("DEPLOY_RESERVED_DOMAINS"),
            gateway_addresses,
        })
    }
}

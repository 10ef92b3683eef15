//! Where certificates come from, and which names no tenant may claim.
//!
//! | variable | default |
//! |---|---|
//! | `DEPLOY_ACME_DIRECTORY` | Let's Encrypt's (`https://acme-v02.api.letsencrypt.org/directory`): the ACME directory certificates are ordered from; `off` orders none (domains stay pending) |
//! | `DEPLOY_ACME_EMAIL` | unset: the account's contact address |
//! | `DEPLOY_ACME_EAB_KID`, `DEPLOY_ACME_EAB_HMAC_KEY` | unset: external account binding, for CAs that require it (the key base64url, as the CA gives it) |
//! | `DEPLOY_ACME_CA_FILE` | unset: a PEM root that signed the directory's own HTTPS certificate, trusted instead of the system's (a private or test CA) |
//! | `DEPLOY_ACME_DNS_HOOK` | unset: an absolute path to a program that writes DNS-01 TXT records in `DEPLOY_ACME_DNS_ZONE` (see `hook.rs`); without it, wildcard domains are refused |
//! | `DEPLOY_ACME_DNS_ZONE` | required with the hook: the zone the hook writes in, such as `acme.capsule.example`. A tenant proves a wildcard is theirs by pointing `_acme-challenge.<their domain>` at `<domain id>.<zone>` with a CNAME, which the CA follows: the hook never writes in a zone a tenant names |
//! | `DEPLOY_ACME_RENEW_BEFORE_DAYS` | `30`: a certificate is renewed this long before it expires |
//! | `DEPLOY_ACME_CHALLENGE_DELAY_MS` | `2500`: the wait between publishing a challenge and asking the CA to check it, so that every gateway has it |
//! | `GATEWAY_APPS_DOMAIN` | `localhost`, as the gateway reads it: the apps' domain, which no custom domain may fall under, and the CNAME target |
//! | `DEPLOY_RESERVED_DOMAINS` | the platform's own names, comma-separated (the API's host, the dashboard's, their zone); no custom domain may equal, cover or fall under one. Required while certificates are ordered and the apps' domain is not `localhost` |
//! | `DEPLOY_ACME_APPS_CERTIFICATE` | `false`: order and renew the apps' own wildcard certificate, `*.<GATEWAY_APPS_DOMAIN>`, over DNS-01 (needs `DEPLOY_ACME_DNS_HOOK`); the gateways serve it for every app host on their HTTPS port |
//! | `DEPLOY_GATEWAY_ADDRESSES` | unset: the gateways' public addresses, comma-separated, given as A/AAAA records for apex domains |

use std::{net::IpAddr, path::PathBuf, time::Duration};

use base64::Engine;
use capsule::config::{ConfigError, Source, parse_bool, parse_or, positive};

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Clone)]
pub struct AcmeConfig {
    /// None: no certificate is ordered.
    pub directory: Option<String>,
    pub email: Option<String>,
    /// The key id and the HMAC key's bytes.
    pub eab: Option<(String, Vec<u8>)>,
    pub ca_file: Option<PathBuf>,
    pub dns_hook: Option<PathBuf>,
    /// Where the hook writes challenge records.
    pub dns_zone: String,
    pub renew_before: Duration,
    pub challenge_delay: Duration,
    pub apps_domain: String,
    pub reserved: Vec<String>,
    pub gateway_addresses: Vec<IpAddr>,
    /// Order `*.<apps domain>` for the platform itself.
    pub apps_certificate: bool,
}

impl std::fmt::Debug for AcmeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeConfig")
            .field("directory", &self.directory)
            .field("email", &self.email)
            .field("eab", &self.eab.as_ref().map(|(kid, _)| (kid, "<redacted>")))
            .field("ca_file", &self.ca_file)
            .field("dns_hook", &self.dns_hook)
            .field("dns_zone", &self.dns_zone)
            .field("apps_domain", &self.apps_domain)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
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
        let dns_zone = source
            .get("DEPLOY_ACME_DNS_ZONE")
            .unwrap_or_default()
            .trim()
            .trim_matches('.')
            .to_ascii_lowercase();
        if source.get("DEPLOY_ACME_DNS_HOOK").is_some() && dns_zone.split('.').count() < 2 {
            return Err(ConfigError::invalid(
                "DEPLOY_ACME_DNS_ZONE",
                &dns_zone,
                "is required with DEPLOY_ACME_DNS_HOOK: the zone the hook writes challenge records in, such as acme.capsule.example",
            ));
        }
        let reserved = names("DEPLOY_RESERVED_DOMAINS");
        if directory.is_some() && apps_domain != "localhost" && reserved.is_empty() {
            return Err(ConfigError::invalid(
                "DEPLOY_RESERVED_DOMAINS",
                "",
                "must name the platform's own hosts (the API's, the dashboard's, their zone) while certificates are ordered: \
                 a tenant could otherwise claim one (or set DEPLOY_ACME_DIRECTORY=off)",
            ));
        }
        let apps_certificate = parse_bool(source, "DEPLOY_ACME_APPS_CERTIFICATE", false)?;
        if apps_certificate && source.get("DEPLOY_ACME_DNS_HOOK").is_none() {
            return Err(ConfigError::invalid(
                "DEPLOY_ACME_APPS_CERTIFICATE",
                "true",
                "a wildcard is validated over DNS: set DEPLOY_ACME_DNS_HOOK too",
            ));
        }
        Ok(Self {
            apps_certificate,
            directory,
            email: source.get("DEPLOY_ACME_EMAIL"),
            eab,
            ca_file: absolute("DEPLOY_ACME_CA_FILE")?,
            dns_hook: absolute("DEPLOY_ACME_DNS_HOOK")?,
            dns_zone,
            renew_before: Duration::from_secs(positive(source, "DEPLOY_ACME_RENEW_BEFORE_DAYS", 30u64)? * 24 * 3600),
            challenge_delay: Duration::from_millis(parse_or(
                source,
                "DEPLOY_ACME_CHALLENGE_DELAY_MS",
                2500,
                "expected a whole number of milliseconds",
            )?),
            apps_domain,
            reserved,
            gateway_addresses,
        })
    }
}

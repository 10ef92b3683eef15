//! Which names a project may claim, which claims collide, and what DNS
//! records a domain needs. Names arrive validated by the proto's pattern
//! (lowercase labels, "*." only in front).

use capsule::proto::deploy::v1 as pb;

use super::config::AcmeConfig;

/// `name` without its "*." (the name a wildcard's certificate is for).
pub fn base(name: &str) -> &str {
    name.strip_prefix("*.").unwrap_or(name)
}

/// Whether `name` is `zone` or under it.
fn within(name: &str, zone: &str) -> bool {
    name == zone || name.ends_with(&format!(".{zone}"))
}

/// Why no project may have `name`, if none may: the platform's own names
/// (the apps' domain and `DEPLOY_RESERVED_DOMAINS`) may be neither
/// claimed, nor covered by a wildcard, nor fallen under — whoever held one
/// could be handed the gateway's own challenge answers, certificates and
/// traffic.
pub fn refusal(name: &str, config: &AcmeConfig) -> Option<String> {
    let base = base(name);
    let platform = std::iter::once(&config.apps_domain).chain(&config.reserved);
    for zone in platform {
        // "*.example.com" covers every name under example.com.
        if within(base, zone) || within(zone, base) && (name.starts_with("*.") || zone == base) {
            return Some(format!(
                "{name} is the platform's own ({zone}): choose a domain of yours outside it"
            ));
        }
    }
    if base.split('.').count() < 2 {
        return Some(format!("{name} is a top-level name: add a domain such as shop.{name}"));
    }
    None
}

/// Whether two projects' names collide: the same name, or one a wildcard
/// that covers the other.
pub fn collide(a: &str, b: &str) -> bool {
    let covers = |wildcard: &str, name: &str| {
        wildcard
            .strip_prefix("*.")
            .and_then(|zone| name.strip_suffix(zone))
            .is_some_and(|label| label.ends_with('.') && !label[..label.len() - 1].contains('.'))
    };
    a == b || covers(a, b) || covers(b, a)
}

/// The records to create for `name`, served at `app_host` (the host name
/// its environment answers at under the apps' domain).
pub fn dns_records(
    name: &str,
    app_host: &str,
    challenge: &str,
    txt: Option<&str>,
    config: &AcmeConfig,
) -> Vec<pb::DnsRecord> {
    let mut records = Vec::new();
    // An apex cannot be a CNAME; a name with more labels usually is one.
    let apex = base(name).split('.').count() == 2;
    if apex && !config.gateway_addresses.is_empty() {
        for address in &config.gateway_addresses {
            records.push(pb::DnsRecord {
                r#type: if address.is_ipv4() { "A" } else { "AAAA" }.to_owned(),
                name: name.to_owned(),
                value: address.to_string(),
                purpose: "sends the domain's requests to the gateway".to_owned(),
            });
        }
    } else {
        records.push(pb::DnsRecord {
            r#type: "CNAME".to_owned(),
            name: name.to_owned(),
            value: app_host.to_owned(),
            purpose: if apex {
                "sends the domain's requests to the gateway (at an apex: an ALIAS or ANAME record where the provider has one)"
            } else {
                "sends the domain's requests to the gateway"
            }
            .to_owned(),
        });
    }
    if challenge == "dns-01" {
        records.push(pb::DnsRecord {
            r#type: "TXT".to_owned(),
            name: format!("_acme-challenge.{}", base(name)),
            value: txt.unwrap_or_default().to_owned(),
            purpose:
                "proves control of the domain to the CA; written by the platform's DNS hook while an order is open"
                    .to_owned(),
        });
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AcmeConfig {
        AcmeConfig {
            directory: None,
            email: None,
            eab: None,
            ca_file: None,
            dns_hook: None,
            renew_before: std::time::Duration::from_secs(1),
            challenge_delay: std::time::Duration::ZERO,
            apps_domain: "apps.capsule.example".to_owned(),
            reserved: vec!["api.capsule.example".to_owned()],
            gateway_addresses: Vec::new(),
        }
    }

    #[test]
    fn the_platforms_names_are_never_a_tenants() {
        let config = config();
        for name in [
            "apps.capsule.example",
            "other-project.apps.capsule.example",
            "*.apps.capsule.example",
            "api.capsule.example",
            "v1.api.capsule.example",
            "*.capsule.example",
        ] {
            assert!(refusal(name, &config).is_some(), "{name} was allowed");
        }
        for name in [
            "shop.example.com",
            "*.example.com",
            "capsule.example.org",
            "x.capsule-example.com",
        ] {
            assert_eq!(refusal(name, &config), None, "{name}");
        }
    }

    #[test]
    fn a_wildcard_collides_with_the_names_one_label_under_it() {
        assert!(collide("shop.example.com", "shop.example.com"));
        assert!(collide("*.example.com", "shop.example.com"));
        assert!(collide("shop.example.com", "*.example.com"));
        assert!(!collide("*.example.com", "a.shop.example.com"));
        assert!(!collide("*.example.com", "example.com"));
        assert!(!collide("shop.example.com", "shop.example.org"));
        assert!(!collide("*.example.com", "badexample.com"));
    }
}

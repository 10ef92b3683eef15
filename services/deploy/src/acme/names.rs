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
/// (the apps' domain, the ACME zone and `DEPLOY_RESERVED_DOMAINS`) may be
/// neither claimed, nor fallen under, nor held above — whoever held one
/// could be handed the gateway's own challenge answers, certificates and
/// traffic.
pub fn refusal(name: &str, config: &AcmeConfig) -> Option<String> {
    let base = base(name);
    let platform = std::iter::once(&config.apps_domain)
        .chain(std::iter::once(&config.dns_zone).filter(|zone| !zone.is_empty()))
        .chain(&config.reserved);
    for zone in platform {
        if within(base, zone) || within(zone, base) {
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
/// with the other under it at any depth (the wildcard's DNS record, a
/// CNAME to its owner's app, answers for every name below it; a name
/// below it held by another would be served with its owner's trust).
pub fn collide(a: &str, b: &str) -> bool {
    let covers = |wildcard: &str, name: &str| {
        wildcard
            .strip_prefix("*.")
            .is_some_and(|zone| base(name).ends_with(&format!(".{zone}")))
    };
    a == b || covers(a, b) || covers(b, a)
}

/// The record the DNS hook writes for a domain's DNS-01 challenge: in the
/// platform's ACME zone, under the domain's id, where its owner's CNAME
/// from `_acme-challenge.<domain>` points — never a name a tenant chose.
/// The platform's own wildcard (no project) is the operator's zone.
pub fn challenge_record(domain_id: uuid::Uuid, project_id: uuid::Uuid, name: &str, config: &AcmeConfig) -> String {
    if project_id.is_nil() {
        format!("_acme-challenge.{}", base(name))
    } else {
        format!("{}.{}", domain_id.simple(), config.dns_zone)
    }
}

/// The records to create for `name`, served at `app_host` (the host name
/// its environment answers at under the apps' domain).
pub fn dns_records(
    name: &str,
    app_host: &str,
    (challenge, record): (&str, &str),
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
            r#type: "CNAME".to_owned(),
            name: format!("_acme-challenge.{}", base(name)),
            value: record.to_owned(),
            purpose:
                "proves control of the domain to the CA: the platform writes each order's TXT record where this points"
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
            dns_zone: "acme.capsule.example".to_owned(),
            renew_before: std::time::Duration::from_secs(1),
            challenge_delay: std::time::Duration::ZERO,
            apps_domain: "apps.capsule.example".to_owned(),
            reserved: vec!["api.capsule.example".to_owned()],
            gateway_addresses: Vec::new(),
            apps_certificate: false,
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
        assert!(refusal("capsule.example", &config).is_some(), "above a reserved name");
        assert!(refusal("x.acme.capsule.example", &config).is_some(), "in the ACME zone");
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
    fn a_wildcard_collides_with_every_name_under_it() {
        assert!(collide("shop.example.com", "shop.example.com"));
        assert!(collide("*.example.com", "shop.example.com"));
        assert!(collide("shop.example.com", "*.example.com"));
        assert!(collide("*.example.com", "a.shop.example.com"));
        assert!(collide("*.example.com", "*.shop.example.com"));
        assert!(!collide("*.shop.example.com", "shop.example.com"));
        assert!(!collide("*.example.com", "example.com"));
        assert!(!collide("shop.example.com", "shop.example.org"));
        assert!(!collide("*.example.com", "badexample.com"));
    }
}

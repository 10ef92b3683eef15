//! Outbound webhooks: how a delivery is signed ([`signature`]), where it
//! may go ([`guard`]) and the sender that works through the outbox
//! ([`send`]). What is queued, and when, is the deploy database's
//! (`db::webhooks`): in the transaction of the change it reports.

pub mod guard;
pub mod send;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::Status;

pub use crate::db::webhooks::{Event, Scope};

/// The `capsule-signature` header of `body` sent at `timestamp` (Unix
/// seconds): `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A new signing secret, `whsec_` and 32 random bytes, and it sealed for
/// the webhook's scope (project or organisation) to store: the secret,
/// the sealed text and the id of the key that sealed it.
pub fn new_secret(keys: &capsule::crypto::Keyring, scope_id: uuid::Uuid) -> Result<(String, String, String), Status> {
    let secret = capsule::auth::new_token("whsec_")?.0;
    let sealed = keys
        .seal(&secret, &sealed_place(scope_id))
        .map_err(|err| err.status("webhooks"))?;
    Ok((secret, sealed.text, sealed.key_id))
}

/// The ids of the keys that sealed stored webhook secrets (for
/// `capsule::db::refuse_unknown_keys`).
pub fn key_ids(conn: &mut diesel::PgConnection) -> diesel::QueryResult<Vec<String>> {
    use diesel::prelude::*;

    use crate::db::schema::webhooks;
    webhooks::table
        .filter(webhooks::key_id.is_not_null())
        .select(webhooks::key_id.assume_not_null())
        .distinct()
        .load(conn)
}

/// Seals every stored secret not sealed by the current key under it
/// (`capsule secrets reencrypt`): those stored before sealing, and those of
/// older keys. How many.
pub fn reencrypt(conn: &mut diesel::PgConnection, keys: &capsule::crypto::Keyring) -> anyhow::Result<usize> {
    use diesel::prelude::*;

    use crate::db::schema::webhooks;
    let current = keys
        .current()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "set {}: its first key seals the secrets",
                capsule::crypto::KEYS_VARIABLE
            )
        })?
        .to_owned();
    type Stored = (
        uuid::Uuid,
        Option<uuid::Uuid>,
        Option<uuid::Uuid>,
        String,
        Option<String>,
    );
    let stale: Vec<Stored> = webhooks::table
        .filter(webhooks::key_id.is_null().or(webhooks::key_id.ne(&current)))
        .select((
            webhooks::id,
            webhooks::project_id,
            webhooks::organization_id,
            webhooks::secret,
            webhooks::key_id,
        ))
        .load(conn)?;
    let mut sealed = 0;
    for (id, project_id, organization_id, secret, key_id) in stale {
        let place = sealed_place(project_id.or(organization_id).unwrap_or_default());
        let plain = match key_id {
            Some(key_id) => keys.open(&key_id, &secret, &place)?,
            None => secret.clone(),
        };
        let again = keys.seal(&plain, &place)?;
        // Only the secret read: a webhook changed meanwhile stays as it is.
        sealed += diesel::update(webhooks::table.find(id).filter(webhooks::secret.eq(&secret)))
            .set((webhooks::secret.eq(again.text), webhooks::key_id.eq(again.key_id)))
            .execute(conn)?;
    }
    Ok(sealed)
}

/// Where a webhook's secret belongs: what it is sealed with, so that a
/// secret copied to another tenant's webhook does not open.
pub fn sealed_place(scope_id: uuid::Uuid) -> Vec<u8> {
    format!("webhooks/{scope_id}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_signatures_cover_time_and_body() {
        for event in Event::ALL {
            assert_eq!(Event::parse(event.as_str()), Some(event));
            assert_eq!(Event::from_proto(event.proto()), Some(event));
        }
        let signed = signature("whsec_key", 1_700_000_000, b"{}");
        assert!(signed.starts_with("t=1700000000,v1="), "{signed}");
        assert_eq!(signed.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(signed, signature("whsec_key", 1_700_000_001, b"{}"));
        assert_ne!(signed, signature("whsec_key", 1_700_000_000, b"{ }"));
        assert_ne!(signed, signature("whsec_other", 1_700_000_000, b"{}"));
    }
}

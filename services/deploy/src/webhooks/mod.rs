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

/// A new signing secret, `whsec_` and 32 random bytes.
pub fn new_secret() -> Result<String, Status> {
    Ok(capsule::auth::new_token("whsec_")?.0)
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

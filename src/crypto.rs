//! Secrets at rest: values a tenant stored (its variables) are sealed with
//! XChaCha20-Poly1305 (random 192-bit nonces, an AEAD from RustCrypto)
//! under a key from `CAPSULE_ENCRYPTION_KEYS`, bound to where they belong
//! (the associated data: a ciphertext copied to another project's row does
//! not open), and each row records the id of the key that sealed it.
//!
//! `CAPSULE_ENCRYPTION_KEYS` is `id:base64` pairs, comma-separated: the
//! first seals new values, the others still open old ones until
//! `capsule secrets reencrypt` has sealed everything under the first.
//! Ids are 1 to 32 letters, digits, `-` or `_`; keys are 32 random bytes
//! (`openssl rand -base64 32`).
//!
//! Imports nothing of the kernel.

use std::collections::HashMap;

use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    Key, XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit, Payload},
};

/// The variable the keys come from.
pub const KEYS_VARIABLE: &str = "CAPSULE_ENCRYPTION_KEYS";
const NONCE_BYTES: usize = 24;

/// Why a value cannot be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("no encryption key is configured ({KEYS_VARIABLE})")]
    NoKey,
    #[error("the key {0:?} that sealed a stored value is not in {KEYS_VARIABLE}")]
    UnknownKey(String),
    #[error("a stored value does not open: it was changed, or moved from where it was sealed")]
    Corrupt,
    #[error("no randomness available")]
    NoRandomness,
}

impl CryptoError {
    /// The status a call that must store `what` answers: FAILED_PRECONDITION
    /// naming the setting without a key, INTERNAL (logged) otherwise.
    pub fn status(&self, what: &str) -> tonic::Status {
        match self {
            Self::NoKey => tonic::Status::failed_precondition(format!(
                "{what} cannot be stored here: no encryption key is configured (the operator sets {KEYS_VARIABLE})"
            )),
            other => crate::rpc::internal(format_args!("cannot seal or open {what}: {other}")),
        }
    }
}

/// A sealed value: the key's id and the nonce and ciphertext, base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: String,
    pub text: String,
}

/// The keys, the first one current.
#[derive(Clone, Default)]
pub struct Keyring {
    current: Option<String>,
    keys: HashMap<String, XChaCha20Poly1305>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("ids", &ids)
            .finish()
    }
}

impl Keyring {
    /// Reads `id:base64,id:base64`; what is wrong with it otherwise.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut ring = Self::default();
        for pair in list.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
            let (id, key) = pair
                .split_once(':')
                .ok_or_else(|| "expected id:base64 pairs such as k1:<32 bytes in base64>".to_owned())?;
            if id.is_empty()
                || id.len() > 32
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("key id {id:?} must be 1 to 32 letters, digits, - or _"));
            }
            let bytes = STANDARD
                .decode(key.trim())
                .map_err(|_| format!("key {id:?} is not base64"))?;
            if bytes.len() != 32 {
                return Err(format!(
                    "key {id:?} has {} bytes, not 32 (make one with `openssl rand -base64 32`)",
                    bytes.len()
                ));
            }
            if ring.keys.contains_key(id) {
                return Err(format!("key id {id:?} is given twice"));
            }
            ring.keys
                .insert(id.to_owned(), XChaCha20Poly1305::new(Key::from_slice(&bytes)));
            ring.current.get_or_insert_with(|| id.to_owned());
        }
        Ok(ring)
    }

    /// The id of the key new values are sealed with.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Whether `id` can open what it sealed.
    pub fn knows(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// Seals `value` for the place `aad` names, under the current key.
    pub fn seal(&self, value: &str, aad: &[u8]) -> Result<Sealed, CryptoError> {
        let id = self.current.as_ref().ok_or(CryptoError::NoKey)?;
        let cipher = self.keys.get(id).ok_or(CryptoError::NoKey)?;
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|_| CryptoError::NoRandomness)?;
        let sealed = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value.as_bytes(),
                    aad,
                },
            )
            .map_err(|_| CryptoError::Corrupt)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&sealed);
        Ok(Sealed {
            key_id: id.clone(),
            text: STANDARD.encode(blob),
        })
    }

    /// Opens what key `key_id` sealed for the place `aad` names.
    pub fn open(&self, key_id: &str, text: &str, aad: &[u8]) -> Result<String, CryptoError> {
        let cipher = self
            .keys
            .get(key_id)
            .ok_or_else(|| CryptoError::UnknownKey(key_id.to_owned()))?;
        let blob = STANDARD.decode(text).map_err(|_| CryptoError::Corrupt)?;
        if blob.len() < NONCE_BYTES {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, sealed) = blob.split_at(NONCE_BYTES);
        let opened = cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
            .map_err(|_| CryptoError::Corrupt)?;
        String::from_utf8(opened).map_err(|_| CryptoError::Corrupt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2:HxwdHhscGRoYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=";

    #[test]
    fn a_sealed_value_opens_only_where_it_was_sealed_and_with_its_key() {
        let ring = Keyring::parse(K1).unwrap();
        let sealed = ring.seal("sk-live-42", b"project-a\0API_KEY").unwrap();
        assert_eq!(sealed.key_id, "k1");
        assert!(!sealed.text.contains("sk-live"));
        assert_eq!(
            ring.open("k1", &sealed.text, b"project-a\0API_KEY").unwrap(),
            "sk-live-42"
        );
        assert_eq!(
            ring.open("k1", &sealed.text, b"project-b\0API_KEY"),
            Err(CryptoError::Corrupt)
        );
        assert_ne!(
            ring.seal("sk-live-42", b"x").unwrap().text,
            ring.seal("sk-live-42", b"x").unwrap().text
        );

        // A new key first: new values under it, old ones still open.
        let rotated = Keyring::parse(&format!("{K2},{K1}")).unwrap();
        assert_eq!(rotated.current(), Some("k2"));
        assert_eq!(
            rotated.open("k1", &sealed.text, b"project-a\0API_KEY").unwrap(),
            "sk-live-42"
        );
        let without_old = Keyring::parse(K2).unwrap();
        assert_eq!(
            without_old.open("k1", &sealed.text, b"project-a\0API_KEY"),
            Err(CryptoError::UnknownKey("k1".to_owned()))
        );
    }

    #[test]
    fn bad_key_lists_say_what_to_fix() {
        for (list, says) in [
            ("k1", "id:base64"),
            ("k1:AAEC", "not 32"),
            ("k 1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "letters"),
            ("k1:!!", "base64"),
            (&format!("{K1},{K1}"), "twice"),
        ] {
            let why = Keyring::parse(list).unwrap_err();
            assert!(why.contains(says), "{list}: {why}");
        }
        assert_eq!(Keyring::parse("").unwrap().current(), None);
    }
}

//! The keys that sign access tokens.
//!
//! Without `AUTH_SIGNING_KEY_FILE`, Ed25519 keys are generated and kept in
//! the database, so every replica signs with the same newest key and
//! publishes the same set. A key older than `AUTH_KEY_ROTATION_DAYS` is
//! replaced; the old one is retired but stays published until every token
//! it signed has expired. Replicas reload the set every minute.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use capsule::{
    auth::{KeySource, Standing},
    db::Database,
    proto::auth::v1::Jwk,
};
use chrono::Utc;
use ed25519_dalek::{SigningKey, pkcs8::DecodePrivateKey, pkcs8::EncodePrivateKey};
use jsonwebtoken::{EncodingKey, Header};
use sha2::{Digest, Sha256};

use crate::{config::AuthConfig, db::SigningKeyRow};

struct Ring {
    kid: String,
    encoding: Option<EncodingKey>,
    jwks: Vec<Jwk>,
}

/// The signing key and the published public keys.
pub struct KeyRing {
    ring: RwLock<Ring>,
}

fn kid_of(public_key: &[u8]) -> String {
    Sha256::digest(public_key)
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn jwk(kid: &str, public_key: &[u8]) -> Jwk {
    Jwk {
        kty: "OKP".to_owned(),
        crv: "Ed25519".to_owned(),
        kid: kid.to_owned(),
        x: URL_SAFE_NO_PAD.encode(public_key),
        alg: "EdDSA".to_owned(),
        r#use: "sig".to_owned(),
    }
}

fn generate() -> anyhow::Result<(String, Vec<u8>, Vec<u8>)> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|err| anyhow::anyhow!("no randomness: {err}"))?;
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key().to_bytes().to_vec();
    let private = key.to_pkcs8_der()?.as_bytes().to_vec();
    Ok((kid_of(&public), private, public))
}

impl KeyRing {
    /// An empty ring: nothing signs or verifies until [`KeyRing::reload`].
    pub fn lazy() -> Self {
        Self {
            ring: RwLock::new(Ring {
                kid: String::new(),
                encoding: None,
                jwks: Vec::new(),
            }),
        }
    }

    /// Reloads the keys (another replica may have rotated them).
    pub async fn reload(&self, db: &Database, config: &AuthConfig) -> anyhow::Result<()> {
        let ring = Self::read(db, config).await?;
        if let Ok(mut current) = self.ring.write() {
            *current = ring;
        }
        Ok(())
    }

    async fn read(db: &Database, config: &AuthConfig) -> anyhow::Result<Ring> {
        if let Some(path) = &config.signing_key_file {
            let pem = std::fs::read_to_string(path)
                .map_err(|err| anyhow::anyhow!("AUTH_SIGNING_KEY_FILE={}: cannot read it: {err}", path.display()))?;
            let key = SigningKey::from_pkcs8_pem(&pem).map_err(|_| {
                anyhow::anyhow!(
                    "AUTH_SIGNING_KEY_FILE={}: not a PKCS#8 PEM Ed25519 private key (openssl genpkey -algorithm ed25519)",
                    path.display()
                )
            })?;
            let public = key.verifying_key().to_bytes();
            let kid = kid_of(&public);
            return Ok(Ring {
                encoding: Some(EncodingKey::from_ed_der(key.to_pkcs8_der()?.as_bytes())),
                jwks: vec![jwk(&kid, &public)],
                kid,
            });
        }
        let grace = chrono::Duration::from_std(config.access_token_ttl + Duration::from_secs(60))?;
        let rotation = chrono::Duration::from_std(config.key_rotation)?;
        let mut rows = db.run(move |conn| SigningKeyRow::published(conn, grace)).await?;
        let needs_new = rows
            .iter()
            .find(|row| row.retired_at.is_none())
            .is_none_or(|newest| newest.created_at < Utc::now() - rotation);
        if needs_new {
            let (kid, private, public) = generate()?;
            let keep = kid.clone();
            rows = db
                .run(move |conn| {
                    SigningKeyRow::insert(conn, &kid, &private, &public)?;
                    SigningKeyRow::retire_all_but(conn, &keep)?;
                    SigningKeyRow::published(conn, grace)
                })
                .await?;
            tracing::info!("generated a new token signing key");
        }
        let signing = rows
            .iter()
            .find(|row| row.retired_at.is_none())
            .ok_or_else(|| anyhow::anyhow!("no active signing key"))?;
        Ok(Ring {
            kid: signing.kid.clone(),
            encoding: Some(EncodingKey::from_ed_der(&signing.private_key)),
            jwks: rows.iter().map(|row| jwk(&row.kid, &row.public_key)).collect(),
        })
    }

    /// Signs claims with the newest key.
    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> anyhow::Result<String> {
        let ring = self
            .ring
            .read()
            .map_err(|_| anyhow::anyhow!("the key ring lock is poisoned"))?;
        let encoding = ring
            .encoding
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the signing keys are not loaded yet"))?;
        let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(ring.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, encoding)?)
    }

    /// The published public keys.
    pub fn jwks(&self) -> Vec<Jwk> {
        self.ring.read().map(|ring| ring.jwks.clone()).unwrap_or_default()
    }
}

/// The auth service verifies tokens with its own ring and checks sessions
/// in its own database, no network hop.
pub struct LocalKeys {
    pub ring: Arc<KeyRing>,
    pub db: Database,
}

#[async_trait::async_trait]
impl KeySource for LocalKeys {
    async fn fetch(&self) -> anyhow::Result<Vec<Jwk>> {
        Ok(self.ring.jwks())
    }

    async fn standing(&self, session_id: uuid::Uuid) -> Result<Standing, tonic::Status> {
        crate::db::standing(&self.db, session_id).await
    }

    async fn api_token(&self, token_hash: Vec<u8>) -> Result<Option<capsule::auth::TokenGrant>, tonic::Status> {
        let grant = crate::db::api_tokens::grant(&self.db, token_hash).await?;
        Ok(capsule::auth::token_grant(&grant))
    }
}

//! Opaque tokens (runner tokens, invitations, email links): 32 random
//! bytes, URL-safe base64, shown once and stored only as their SHA-256.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};
use tonic::Status;

/// A new token, `prefix` first, and its hash to store.
pub fn new_token(prefix: &str) -> Result<(String, Vec<u8>), Status> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| Status::unavailable("no randomness available; retry"))?;
    let token = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// What is stored of a token, and looked up by.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

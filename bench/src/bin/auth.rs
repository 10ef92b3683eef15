//! Auth figures:
//!
//! 1. The per-request cost of the token check every service runs
//!    (`capsule::auth::authorize`: header parse, key lookup, EdDSA verify,
//!    claims), single-threaded, in µs. Target: under 50 µs.
//! 2. Logins per second against a real auth service and database, with
//!    `CONCURRENCY` clients (default 8) for `BENCH_SECONDS` (default 10).
//!    Logins are bound by argon2id (m=19 MiB, t=2, p=1), on purpose.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use capsule::{
    auth::{AUDIENCE, Claims, ISSUER, KeySet, KeySource},
    config::ServiceKind,
    proto::auth::v1::{self as pb, Jwk, auth_service_client::AuthServiceClient},
    testing::{self, TestDatabase},
};
use capsule_bench::env_number;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use tokio_util::sync::CancellationToken;

struct Static(Vec<Jwk>);

#[async_trait::async_trait]
impl KeySource for Static {
    async fn fetch(&self) -> anyhow::Result<Vec<Jwk>> {
        Ok(self.0.clone())
    }

    async fn standing(&self, _session_id: uuid::Uuid) -> Result<capsule::auth::Standing, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the token-check bench calls no admin method",
        ))
    }
}

/// Microseconds per `authorize` call: (first sight of each token, a token
/// seen before).
async fn token_check() -> anyhow::Result<(f64, f64)> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let jwk = Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        kid: "bench".into(),
        x: URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes()),
        alg: "EdDSA".into(),
        r#use: "sig".into(),
    };
    let encoding = jsonwebtoken::EncodingKey::from_ed_der(key.to_pkcs8_der()?.as_bytes());
    let now = chrono::Utc::now().timestamp();
    let rounds = 5_000u32;
    let headers: Vec<http::HeaderMap> = (0..rounds)
        .map(|_| {
            let claims = Claims {
                sub: uuid::Uuid::new_v4().to_string(),
                role: "user".into(),
                sid: uuid::Uuid::new_v4().to_string(),
                iat: now,
                exp: now + 900,
                iss: ISSUER.into(),
                aud: AUDIENCE.into(),
            };
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
            header.kid = Some("bench".into());
            let token = jsonwebtoken::encode(&header, &claims, &encoding)?;
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
            Ok(headers)
        })
        .collect::<anyhow::Result<_>>()?;
    let keys = KeySet::new(Arc::new(Static(vec![jwk])));
    let path = "/capsule.project.v1.ProjectService/GetProject";
    // Warm the key cache and the policy table with a token of its own.
    capsule::auth::authorize(&keys, path, &headers[0]).await?;
    let (keys, headers) = (&keys, &headers);
    let time = |label| async move {
        let start = Instant::now();
        for headers in headers.iter().skip(1) {
            let caller = capsule::auth::authorize(keys, path, headers).await;
            std::hint::black_box(caller.map_err(|status| anyhow::anyhow!("{label}: {status}"))?);
        }
        anyhow::Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds - 1))
    };
    let first = time("first sight").await?;
    let again = time("seen before").await?;
    Ok((first, again))
}

async fn logins() -> anyhow::Result<(f64, u64, u64)> {
    let concurrency = env_number("CONCURRENCY", 8);
    let seconds = env_number("BENCH_SECONDS", 10);
    let db = TestDatabase::migrated(ServiceKind::Auth, &capsule_auth::MIGRATIONS).await;
    let listener = testing::free_listener().await;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let config = capsule_auth::AuthConfig::from_source(&|name: &str| match name {
        // Every client logs in from 127.0.0.1 with the right password: no
        // failure is counted, but keep the limits out of the way anyway.
        "AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS" => Some("1000000".to_owned()),
        _ => None,
    })?;
    let server = tokio::spawn(capsule_auth::serve_with(
        listener,
        db.db_config(),
        config,
        testing::serve_config(addr),
        shutdown.clone(),
    ));
    testing::wait_for_health(addr, "capsule.auth.v1.AuthService", 1, Duration::from_secs(20)).await;
    let client = AuthServiceClient::new(testing::channel(addr).await);
    client
        .clone()
        .register(pb::RegisterRequest {
            email: "bench@example.com".into(),
            password: "correct horse battery staple".into(),
            name: "Bench".into(),
        })
        .await?;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut client, ok, failed) = (client.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let result = client
                        .login(pb::LoginRequest {
                            email: "bench@example.com".into(),
                            password: "correct horse battery staple".into(),
                        })
                        .await;
                    match result {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    shutdown.cancel();
    server.await??;
    let ok = ok.load(Ordering::Relaxed);
    #[expect(clippy::cast_precision_loss, reason = "counts are far below 2^52")]
    let rate = ok as f64 / elapsed;
    Ok((rate, ok, failed.load(Ordering::Relaxed)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (first, again) = token_check().await?;
    println!("token check, first sight of a token (EdDSA verify + claims): {first:.1} µs per request");
    println!("token check, token seen before (verified-token cache):      {again:.2} µs per request");
    let (rate, ok, failed) = logins().await?;
    println!(
        "logins: {rate:.1}/s ({ok} ok, {failed} failed; argon2id m=19456 KiB t=2 p=1; {} clients)",
        env_number("CONCURRENCY", 8)
    );
    Ok(())
}

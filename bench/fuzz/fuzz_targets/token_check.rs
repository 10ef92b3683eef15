//! The token check every service runs: any `authorization` header is
//! answered (a caller or a status), never a panic. Input: the first byte
//! picks the mode — a raw header; or a token whose header and claims are
//! the fuzzer's, correctly signed with a known key, so the claims parser
//! (sub, role, sid, exp, …) is reached past the signature check.

#![no_main]

use std::sync::{Arc, OnceLock};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use capsule::{
    auth::{KeySet, KeySource},
    proto::auth::v1::Jwk,
};
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;

struct Static(Vec<Jwk>);

#[async_trait::async_trait]
impl KeySource for Static {
    async fn fetch(&self) -> anyhow::Result<Vec<Jwk>> {
        Ok(self.0.clone())
    }

    async fn standing(&self, _session_id: uuid::Uuid) -> Result<capsule::auth::Standing, tonic::Status> {
        Err(tonic::Status::unimplemented("the fuzzed methods need no admin"))
    }
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    keys: Arc<KeySet>,
    signer: SigningKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let signer = SigningKey::from_bytes(&[7u8; 32]);
        let jwk = Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: "fuzz".into(),
            x: URL_SAFE_NO_PAD.encode(signer.verifying_key().to_bytes()),
            alg: "EdDSA".into(),
            r#use: "sig".into(),
        };
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a runtime"),
            keys: KeySet::new(Arc::new(Static(vec![jwk]))),
            signer,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let header = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        // A signed token around the fuzzer's claims (and, after a NUL, its
        // JOSE header; a valid one otherwise).
        let mut parts = rest.splitn(2, |&b| b == 0);
        let claims = parts.next().unwrap_or_default();
        let jose = parts.next().map_or_else(
            || br#"{"alg":"EdDSA","typ":"JWT","kid":"fuzz"}"#.to_vec(),
            <[u8]>::to_vec,
        );
        let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(jose), URL_SAFE_NO_PAD.encode(claims));
        let signature = fixture.signer.sign(signing_input.as_bytes());
        format!(
            "Bearer {signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        )
        .into_bytes()
    };
    let Ok(value) = http::HeaderValue::from_bytes(&header) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    fixture.runtime.block_on(async {
        let _ =
            capsule::auth::authorize(&fixture.keys, "/capsule.project.v1.ProjectService/GetProject", &headers).await;
    });
});

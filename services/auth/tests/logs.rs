//! A full scenario's logs hold no password, token or hash.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use capsule::proto::auth::v1 as pb;
use common::{PASSWORD, authed, mailed_token, register, start};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_scenario_logs_no_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let auth = start(&[]).await;
    let mut client = auth.client.clone();
    let registered = register(&auth, "secret-keeper@example.com").await;
    let tokens = registered.tokens.clone().unwrap();
    let wrong = client
        .login(pb::LoginRequest {
            email: "secret-keeper@example.com".into(),
            password: "a wrong guess entirely".into(),
        })
        .await;
    assert!(wrong.is_err());
    let login = client
        .login(pb::LoginRequest {
            email: "secret-keeper@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let login_tokens = login.tokens.unwrap();
    client
        .get_me(authed(pb::GetMeRequest {}, &login_tokens.access_token))
        .await
        .unwrap();
    let refreshed = client
        .refresh(pb::RefreshRequest {
            refresh_token: login_tokens.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    let _ = client
        .refresh(pb::RefreshRequest {
            refresh_token: login_tokens.refresh_token.clone(),
        })
        .await;
    let verification = mailed_token(&auth.db, "secret-keeper@example.com");
    client
        .verify_email(pb::VerifyEmailRequest {
            token: verification.clone(),
        })
        .await
        .unwrap();
    client
        .change_password(authed(
            pb::ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: "the second passphrase".into(),
            },
            &tokens.access_token,
        ))
        .await
        .unwrap();
    client
        .logout(authed(pb::LogoutRequest {}, &tokens.access_token))
        .await
        .unwrap();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("registered"), "the scenario was logged:\n{logs}");
    for secret in [
        PASSWORD,
        "a wrong guess entirely",
        "the second passphrase",
        tokens.access_token.as_str(),
        tokens.refresh_token.as_str(),
        login_tokens.access_token.as_str(),
        login_tokens.refresh_token.as_str(),
        refreshed.access_token.as_str(),
        refreshed.refresh_token.as_str(),
        verification.as_str(),
        "$argon2id$",
        "secret-keeper@example.com",
    ] {
        assert!(!logs.contains(secret), "the logs hold {secret:?}");
    }
}

//! Accounts, sessions and tokens through gRPC, against real PostgreSQL.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod common;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use capsule::proto::auth::v1::{self as pb};
use common::{PASSWORD, access, authed, mailed_token, register, start, violated_fields};
use diesel::{RunQueryDsl, connection::SimpleConnection};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn register_login_me_refresh_reuse_and_logout() {
    let auth = start(&[]).await;
    let mut client = auth.client.clone();
    let registered = register(&auth, "Ada@Example.com").await;
    let user = registered.user.clone().unwrap();
    assert_eq!(user.email, "ada@example.com", "emails are normalised");
    assert_eq!(user.role, pb::Role::User as i32);

    let login = client
        .login(pb::LoginRequest {
            email: "ADA@example.COM".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let tokens = login.tokens.unwrap();
    assert_eq!(tokens.token_type, "Bearer");

    let me = client
        .get_me(authed(pb::GetMeRequest {}, &tokens.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, user.id);
    assert_eq!(me.profile.unwrap().name, "Ada Lovelace");

    let refreshed = client
        .refresh(pb::RefreshRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap();
    assert_ne!(refreshed.refresh_token, tokens.refresh_token, "refresh tokens rotate");
    client
        .get_me(authed(pb::GetMeRequest {}, &refreshed.access_token))
        .await
        .unwrap();

    // The spent token again: refused, and its whole family is revoked.
    let reused = client
        .refresh(pb::RefreshRequest {
            refresh_token: tokens.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::Unauthenticated);
    assert!(reused.message().contains("already used"), "{}", reused.message());
    let family = client
        .refresh(pb::RefreshRequest {
            refresh_token: refreshed.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(family.code(), Code::Unauthenticated);
    let cut = client
        .get_me(authed(pb::GetMeRequest {}, &refreshed.access_token))
        .await
        .unwrap_err();
    assert_eq!(cut.code(), Code::Unauthenticated, "the revoked session is cut at once");

    // Logout ends that session only.
    let first = access(&registered);
    client.logout(authed(pb::LogoutRequest {}, &first)).await.unwrap();
    let after = client.get_me(authed(pb::GetMeRequest {}, &first)).await.unwrap_err();
    assert_eq!(after.code(), Code::Unauthenticated);
    assert_eq!(after.message(), "your session has ended; sign in again");
}

#[tokio::test]
async fn duplicate_emails_in_any_case_are_refused() {
    let auth = start(&[]).await;
    register(&auth, "grace@example.com").await;
    let err = auth
        .client
        .clone()
        .register(pb::RegisterRequest {
            email: "GRACE@Example.Com".into(),
            password: "another fine passphrase".into(),
            name: "Grace".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn wrong_password_and_unknown_email_answer_identically() {
    let auth = start(&[]).await;
    register(&auth, "alan@example.com").await;
    let mut client = auth.client.clone();
    let wrong = client
        .login(pb::LoginRequest {
            email: "alan@example.com".into(),
            password: "not the password".into(),
        })
        .await
        .unwrap_err();
    let unknown = client
        .login(pb::LoginRequest {
            email: "nobody@example.com".into(),
            password: "not the password".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(wrong.code(), unknown.code());
    assert_eq!(wrong.message(), unknown.message());
    assert_eq!(wrong.message(), "email or password is incorrect");
}

#[tokio::test]
async fn bad_registrations_and_preferences_name_their_fields() {
    let auth = start(&[]).await;
    let mut client = auth.client.clone();
    let long = "x".repeat(10_000);
    for (email, password, name, fields) in [
        ("ok@example.com", "", "Ok", vec!["password"]),
        ("ok@example.com", "short", "Ok", vec!["password"]),
        ("ok@example.com", "password123", "Ok", vec!["password"]),
        ("ok@example.com", long.as_str(), "Ok", vec!["password"]),
        ("not-an-email", PASSWORD, "Ok", vec!["email"]),
        ("", PASSWORD, "", vec!["email", "name"]),
        ("a@b.co", PASSWORD, "bad\u{0}name", vec!["name"]),
    ] {
        let err = client
            .register(pb::RegisterRequest {
                email: email.into(),
                password: password.into(),
                name: name.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&err), fields, "{email:?} / {name:?}");
    }

    let token = access(&register(&auth, "prefs@example.com").await);
    let err = client
        .update_preferences(authed(
            pb::UpdatePreferencesRequest {
                preferences: Some(pb::Preferences {
                    theme: "neon".into(),
                    language: "english please".into(),
                    timezone: "Mars Olympus Mons".into(),
                    update_time: None,
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["theme".into(), "language".into(), "timezone".into()],
                }),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        ["preferences.theme", "preferences.language", "preferences.timezone"]
    );
    let saved = client
        .update_preferences(authed(
            pb::UpdatePreferencesRequest {
                preferences: Some(pb::Preferences {
                    theme: "dark".into(),
                    language: "pt-BR".into(),
                    timezone: "Europe/Paris".into(),
                    update_time: None,
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["theme".into(), "timezone".into()],
                }),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (saved.theme.as_str(), saved.language.as_str(), saved.timezone.as_str()),
        ("dark", "en", "Europe/Paris")
    );

    let err = client
        .update_profile(authed(
            pb::UpdateProfileRequest {
                profile: Some(pb::Profile {
                    name: " \t ".into(),
                    avatar_url: "javascript:alert(1)".into(),
                    bio: "b".repeat(501),
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["name".into(), "avatar_url".into(), "bio".into(), "email".into()],
                }),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        ["profile.name", "profile.avatar_url", "profile.bio", "update_mask"]
    );
}

/// Signs claims with the service's own private key, read from its database.
fn forge(auth: &common::Auth, claims: serde_json::Value) -> String {
    use diesel::{
        QueryableByName,
        sql_types::{Bytea, Text},
    };
    #[derive(QueryableByName)]
    struct Key {
        #[diesel(sql_type = Text)]
        kid: String,
        #[diesel(sql_type = Bytea)]
        private_key: Vec<u8>,
    }
    let key: Key = diesel::sql_query("SELECT kid, private_key FROM signing_keys WHERE retired_at IS NULL LIMIT 1")
        .get_result(&mut auth.db.connect())
        .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(key.kid);
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&key.private_key),
    )
    .unwrap()
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_refused() {
    let auth = start(&[]).await;
    let registered = register(&auth, "mallory@example.com").await;
    let good = access(&registered);
    let user_id = registered.user.unwrap().id;
    let payload: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(good.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let now = chrono::Utc::now().timestamp();
    let with = |key: &str, value: serde_json::Value| {
        let mut claims = payload.clone();
        claims[key] = value;
        claims
    };

    let mut tampered = good.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let mut swapped_payload: Vec<&str> = good.split('.').collect();
    let admin_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&with("role", "admin".into())).unwrap());
    swapped_payload[1] = &admin_payload;
    let swapped = swapped_payload.join(".");
    let alg_none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap())
    );
    let other_key = {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("someone-elses-key".into());
        jsonwebtoken::encode(
            &header,
            &payload,
            &jsonwebtoken::EncodingKey::from_ed_der(key.to_pkcs8_der().unwrap().as_bytes()),
        )
        .unwrap()
    };
    let cases = [
        ("tampered signature", tampered),
        ("payload swapped to admin", swapped),
        ("alg none", alg_none),
        ("other key", other_key),
        ("expired", forge(&auth, with("exp", (now - 3600).into()))),
        ("wrong issuer", forge(&auth, with("iss", "evil".into()))),
        ("wrong audience", forge(&auth, with("aud", "elsewhere".into()))),
        (
            "no sub",
            forge(
                &auth,
                serde_json::json!({"role": "user", "sid": payload["sid"], "iat": now, "exp": now + 60, "iss": "capsule-auth", "aud": "capsule"}),
            ),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    let mut client = auth.client.clone();
    for (case, token) in cases {
        let err = client.get_me(authed(pb::GetMeRequest {}, &token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{case}: {err:?}");
        assert!(!err.message().contains(&token), "{case}: the token is not echoed");
    }
    let missing = client.get_me(pb::GetMeRequest {}).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert!(missing.message().contains("Bearer"), "{}", missing.message());

    // A well-signed token forged with the real key is accepted: the checks
    // above failed for the reasons named, not by accident.
    let fine = forge(&auth, with("iat", now.into()));
    let me = client
        .get_me(authed(pb::GetMeRequest {}, &fine))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.id, user_id);
}

#[tokio::test]
async fn admin_methods_need_the_admin_role_and_deactivation_cuts_access() {
    let auth = start(&[]).await;
    let mut client = auth.client.clone();
    let user = register(&auth, "user@example.com").await;
    let user_token = access(&user);
    let user_refresh = user.tokens.clone().unwrap().refresh_token;
    let denied = client
        .list_users(authed(pb::ListUsersRequest::default(), &user_token))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let admin = register(&auth, "root@example.com").await;
    auth.db
        .connect()
        .batch_execute(&format!(
            "UPDATE users SET role = 'admin' WHERE id = '{}'",
            admin.user.as_ref().unwrap().id
        ))
        .unwrap();
    let admin_token = client
        .login(pb::LoginRequest {
            email: "root@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token;

    let page = client
        .list_users(authed(
            pb::ListUsersRequest {
                page_size: 1,
                ..Default::default()
            },
            &admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.users.len(), 1);
    assert!(!page.next_page_token.is_empty());
    let rest = client
        .list_users(authed(
            pb::ListUsersRequest {
                page_size: 10,
                page_token: page.next_page_token,
                ..Default::default()
            },
            &admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.users.len(), 1);
    assert_ne!(rest.users[0].id, page.users[0].id);
    let bad_page = client
        .list_users(authed(
            pb::ListUsersRequest {
                page_size: -1,
                ..Default::default()
            },
            &admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_page), ["page_size"]);

    let user_id = user.user.unwrap().id;
    let deactivated = client
        .deactivate_user(authed(
            pb::DeactivateUserRequest {
                user_id: user_id.clone(),
            },
            &admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!deactivated.active);
    let refresh = client
        .refresh(pb::RefreshRequest {
            refresh_token: user_refresh,
        })
        .await
        .unwrap_err();
    assert_eq!(
        refresh.code(),
        Code::Unauthenticated,
        "a deactivated user's refresh is refused"
    );
    let me = client
        .get_me(authed(pb::GetMeRequest {}, &user_token))
        .await
        .unwrap_err();
    assert_eq!(me.code(), Code::Unauthenticated);
    let login = client
        .login(pb::LoginRequest {
            email: "user@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(login.code(), Code::PermissionDenied);

    client
        .reactivate_user(authed(pb::ReactivateUserRequest { user_id }, &admin_token))
        .await
        .unwrap();
    client
        .login(pb::LoginRequest {
            email: "user@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn throttling_starts_after_the_configured_failures_and_lifts() {
    let auth = start(&[
        ("AUTH_LOGIN_MAX_FAILURES", "3"),
        ("AUTH_LOGIN_WINDOW_SECS", "60"),
        ("AUTH_LOGIN_LOCKOUT_SECS", "2"),
    ])
    .await;
    register(&auth, "target@example.com").await;
    let mut client = auth.client.clone();
    let attempt = |password: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .login(pb::LoginRequest {
                    email: "target@example.com".into(),
                    password: password.into(),
                })
                .await
        }
    };
    for _ in 0..3 {
        assert_eq!(
            attempt("wrong password").await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    let locked = attempt(PASSWORD).await.unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted, "even the right password waits");
    let retry = locked.get_details_retry_info().expect("a RetryInfo detail");
    assert!(retry.retry_delay.is_some_and(|delay| delay <= Duration::from_secs(2)));

    // The counters live in the database, not in the process.
    let rows: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "SELECT count(*) FROM login_throttles WHERE locked_until > now()",
    )
    .get_result(&mut auth.db.connect())
    .unwrap();
    assert!(rows >= 1);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    attempt(PASSWORD).await.unwrap();
    client
        .login(pb::LoginRequest {
            email: "target@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap();
}

/// 50 wrong guesses at once against one account: the codes of the answers,
/// and the failures then counted for the account.
async fn fifty_parallel_guesses(settings: &[(&str, &str)]) -> (Vec<Code>, i32) {
    let auth = start(settings).await;
    register(&auth, "target@example.com").await;
    let guesses = (0..50).map(|_| {
        let mut client = auth.client.clone();
        async move {
            client
                .login(pb::LoginRequest {
                    email: "target@example.com".into(),
                    password: "wrong password".into(),
                })
                .await
                .unwrap_err()
                .code()
        }
    });
    let codes = futures::future::join_all(guesses).await;
    let counted: i32 = diesel::dsl::sql::<diesel::sql_types::Integer>(
        "SELECT failures FROM login_throttles WHERE scope = 'account:target@example.com'",
    )
    .get_result(&mut auth.db.connect())
    .unwrap();
    (codes, counted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_each_count_and_none_slips_past_the_limit() {
    let roomy = [
        ("AUTH_LOGIN_MAX_FAILURES", "1000"),
        ("AUTH_LOGIN_MAX_FAILURES_PER_ADDRESS", "1000"),
    ];
    let (codes, counted) = fifty_parallel_guesses(&roomy).await;
    assert!(codes.iter().all(|code| *code == Code::Unauthenticated), "{codes:?}");
    assert_eq!(counted, 50, "50 parallel guesses record 50 failures");

    let strict = [("AUTH_LOGIN_MAX_FAILURES", "5")];
    let (codes, counted) = fifty_parallel_guesses(&strict).await;
    let checked = codes.iter().filter(|code| **code == Code::Unauthenticated).count();
    let refused = codes.iter().filter(|code| **code == Code::ResourceExhausted).count();
    assert_eq!(
        (checked, refused),
        (5, 45),
        "only five guesses are ever checked: {codes:?}"
    );
    assert_eq!(counted, 5);
}

#[tokio::test]
async fn email_verification_and_password_reset_use_single_use_tokens() {
    let auth = start(&[]).await;
    let mut client = auth.client.clone();
    let registered = register(&auth, "verify@example.com").await;
    assert!(!registered.user.as_ref().unwrap().email_verified);

    let token = mailed_token(&auth.db, "verify@example.com");
    let verified = client
        .verify_email(pb::VerifyEmailRequest { token: token.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(verified.user.unwrap().email_verified);
    let again = client.verify_email(pb::VerifyEmailRequest { token }).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "{again:?}");
    assert!(again.message().contains("already used"), "{again:?}");

    // Reset: the same answer for unknown addresses; the token works once and
    // ends every session.
    client
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: "nobody@example.com".into(),
        })
        .await
        .unwrap();
    client
        .request_password_reset(pb::RequestPasswordResetRequest {
            email: "verify@example.com".into(),
        })
        .await
        .unwrap();
    let reset = mailed_token(&auth.db, "verify@example.com");
    let weak = client
        .reset_password(pb::ResetPasswordRequest {
            token: reset.clone(),
            new_password: "12345678".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&weak), ["new_password"]);
    client
        .reset_password(pb::ResetPasswordRequest {
            token: reset.clone(),
            new_password: "a brand new passphrase".into(),
        })
        .await
        .unwrap();
    let old_session = client.get_me(authed(pb::GetMeRequest {}, &access(&registered))).await;
    assert_eq!(
        old_session.unwrap_err().code(),
        Code::Unauthenticated,
        "a reset ends every session"
    );
    client
        .login(pb::LoginRequest {
            email: "verify@example.com".into(),
            password: "a brand new passphrase".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        client
            .reset_password(pb::ResetPasswordRequest {
                token: reset,
                new_password: "yet another passphrase".into(),
            })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn changing_the_password_ends_the_other_sessions() {
    let auth = start(&[]).await;
    let mut client = auth.client.clone();
    let first = register(&auth, "two@example.com").await;
    let second = client
        .login(pb::LoginRequest {
            email: "two@example.com".into(),
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .tokens
        .unwrap()
        .access_token;
    let sessions = client
        .list_sessions(authed(pb::ListSessionsRequest::default(), &second))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s.current).count(), 1);

    let wrong = client
        .change_password(authed(
            pb::ChangePasswordRequest {
                current_password: "not it at all".into(),
                new_password: "another good passphrase".into(),
            },
            &second,
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong:?}");
    assert!(wrong.message().contains("current_password"), "{wrong:?}");
    let changed = client
        .change_password(authed(
            pb::ChangePasswordRequest {
                current_password: PASSWORD.into(),
                new_password: "another good passphrase".into(),
            },
            &second,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.revoked_sessions, 1);
    assert_eq!(
        client
            .get_me(authed(pb::GetMeRequest {}, &access(&first)))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    client.get_me(authed(pb::GetMeRequest {}, &second)).await.unwrap();
}

#[tokio::test]
async fn the_key_set_is_public_and_verifies_issued_tokens() {
    let auth = start(&[]).await;
    let jwks = auth
        .client
        .clone()
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwks.keys.len(), 1);
    let key = &jwks.keys[0];
    assert_eq!(
        (key.kty.as_str(), key.crv.as_str(), key.alg.as_str()),
        ("OKP", "Ed25519", "EdDSA")
    );
    let token = access(&register(&auth, "jwks@example.com").await);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["capsule"]);
    validation.set_issuer(&["capsule-auth"]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_ed_components(&key.x).unwrap(),
        &validation,
    )
    .unwrap()
    .claims;
    for claim in ["sub", "role", "sid", "iat", "exp", "iss", "aud"] {
        assert!(claims.get(claim).is_some(), "{claim}");
    }
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 900);
}

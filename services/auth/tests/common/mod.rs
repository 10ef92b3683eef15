//! An auth service on a free port with its own database, and helpers to
//! call it.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use capsule::{
    config::ServiceKind,
    proto::auth::v1::{self as pb, auth_service_client::AuthServiceClient},
    testing::{self, TestDatabase},
};
use capsule_auth::AuthConfig;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt;

pub struct Auth {
    pub addr: SocketAddr,
    pub db: TestDatabase,
    pub client: AuthServiceClient<Channel>,
    shutdown: CancellationToken,
}

impl Drop for Auth {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn start(settings: &[(&str, &str)]) -> Auth {
    let db = TestDatabase::migrated(ServiceKind::Auth, &capsule_auth::MIGRATIONS).await;
    let map: HashMap<String, String> = settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let config = AuthConfig::from_source(&move |name: &str| map.get(name).cloned()).expect("valid test settings");
    let listener = testing::free_listener().await;
    let addr = listener.local_addr().expect("a bound listener has an address");
    let shutdown = CancellationToken::new();
    tokio::spawn(capsule_auth::serve_with(
        listener,
        db.db_config(),
        config,
        testing::serve_config(addr),
        shutdown.clone(),
    ));
    testing::wait_for_health(addr, "capsule.auth.v1.AuthService", 1, Duration::from_secs(20)).await;
    let client = AuthServiceClient::new(testing::channel(addr).await);
    Auth {
        addr,
        db,
        client,
        shutdown,
    }
}

/// A request carrying `token` as its bearer.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a token is a header value"),
    );
    request
}

pub const PASSWORD: &str = "correct horse battery staple";

pub async fn register(auth: &Auth, email: &str) -> pb::RegisterResponse {
    auth.client
        .clone()
        .register(pb::RegisterRequest {
            email: email.to_owned(),
            password: PASSWORD.to_owned(),
            name: "Ada Lovelace".to_owned(),
        })
        .await
        .expect("registration succeeds")
        .into_inner()
}

pub fn access(response: &pb::RegisterResponse) -> String {
    response.tokens.as_ref().expect("tokens").access_token.clone()
}

/// The fields named in a status's BadRequest detail.
pub fn violated_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("a BadRequest detail")
        .field_violations
        .into_iter()
        .map(|violation| violation.field)
        .collect()
}

/// The link token of the newest email sent to `recipient`.
pub fn mailed_token(db: &TestDatabase, recipient: &str) -> String {
    use diesel::{QueryableByName, RunQueryDsl, sql_types::Text};
    #[derive(QueryableByName)]
    struct Mail {
        #[diesel(sql_type = Text)]
        body: String,
    }
    let mail: Mail =
        diesel::sql_query("SELECT body FROM email_outbox WHERE recipient = $1 ORDER BY created_at DESC LIMIT 1")
            .bind::<Text, _>(recipient)
            .get_result(&mut db.connect())
            .expect("an email was queued");
    mail.body
        .split("token=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the email holds a link with a token")
        .to_owned()
}

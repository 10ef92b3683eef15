//! Sign-in throttling: the counters an attempt at a password or a token
//! counts against, taken before the attempt (as a failure, in advance) and
//! cleared when it succeeds; RESOURCE_EXHAUSTED with the wait while one is
//! locked.

use std::time::Duration;

use capsule::rpc;
use chrono::Utc;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{db, state::AuthServiceApi};

impl AuthServiceApi {
    /// The counters an attempt at `email`'s password from `address` counts
    /// against: that account from that address (a few failures lock the
    /// pair), that address for any account (a flood), and that account
    /// from anywhere (a distributed guesser, with a high ceiling) — so a
    /// flood from one address does not lock its victim out elsewhere.
    pub(crate) fn password_throttles(&self, email: &str, address: &str) -> Result<Vec<db::Throttle>, Status> {
        let config = &self.inner.config;
        let window = chrono::Duration::from_std(config.failure_window).map_err(rpc::internal)?;
        let lockout = chrono::Duration::from_std(config.lockout).map_err(rpc::internal)?;
        let rule = |max_failures, window| db::ThrottleRule {
            max_failures,
            window,
            lockout,
        };
        Ok(vec![
            db::Throttle {
                scope: format!("pair:{email}|{address}"),
                rule: rule(config.max_failures_per_pair, window),
                shared: false,
            },
            self.address_throttle(address)?,
            db::Throttle {
                scope: format!("account:{email}"),
                rule: rule(config.max_failures_per_account, chrono::Duration::days(1)),
                shared: false,
            },
        ])
    }

    /// The counter of failed attempts from `address`, for any account or
    /// token.
    pub(crate) fn address_throttle(&self, address: &str) -> Result<db::Throttle, Status> {
        let config = &self.inner.config;
        Ok(db::Throttle {
            scope: format!("address:{address}"),
            rule: db::ThrottleRule {
                max_failures: config.max_failures_per_address,
                window: chrono::Duration::from_std(config.failure_window).map_err(rpc::internal)?,
                lockout: chrono::Duration::from_std(config.lockout).map_err(rpc::internal)?,
            },
            shared: true,
        })
    }

    /// Counts an attempt as a failure in advance (see
    /// [`db::take_attempt`]); RESOURCE_EXHAUSTED with the wait while one of
    /// its counters is locked.
    pub(crate) async fn take_attempt(&self, throttles: &[db::Throttle]) -> Result<(), Status> {
        let throttles = throttles.to_vec();
        match self
            .inner
            .db
            .run(move |conn| db::take_attempt(conn, &throttles))
            .await?
        {
            Ok(()) => Ok(()),
            Err(until) => Err(Self::throttled(until)),
        }
    }

    /// The attempt counted by [`Self::take_attempt`] succeeded.
    pub(crate) async fn attempt_succeeded(&self, throttles: Vec<db::Throttle>) -> Result<(), Status> {
        Ok(self
            .inner
            .db
            .run(move |conn| db::attempt_succeeded(conn, &throttles))
            .await?)
    }

    pub(crate) fn throttled(until: chrono::DateTime<Utc>) -> Status {
        let wait = (until - Utc::now()).num_seconds().max(1);
        let mut details = ErrorDetails::new();
        details.set_retry_info(Some(Duration::from_secs(u64::try_from(wait).unwrap_or(1))));
        Status::with_error_details(
            Code::ResourceExhausted,
            format!("too many failed attempts; retry in {wait} s"),
            details,
        )
    }
}

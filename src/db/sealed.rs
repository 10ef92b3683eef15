//! The keys that sealed stored values, checked once a service can read its
//! database: values sealed by a key this process lacks could never be
//! opened, so the service stops, naming the setting, instead of failing
//! call after call.

use std::{sync::Arc, time::Duration};

use diesel::{PgConnection, QueryResult};
use tokio_util::sync::CancellationToken;

use super::Database;
use crate::crypto::{KEYS_VARIABLE, Keyring};

/// Watches, in the background, that `keys` knows every key id `used`
/// reads (retrying each second until the database answers, migrated);
/// when one is missing, logs which and cancels `shutdown`.
pub fn refuse_unknown_keys(
    db: Database,
    used: fn(&mut PgConnection) -> QueryResult<Vec<String>>,
    keys: Arc<Keyring>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            match db.run(used).await {
                Ok(ids) => {
                    if let Some(missing) = ids.iter().find(|id| !keys.knows(id)) {
                        tracing::error!(
                            "{KEYS_VARIABLE} lacks the key {missing:?}, which sealed stored values: give it \
                             (keys after the first still open old values); stopping"
                        );
                        shutdown.cancel();
                    }
                    return;
                }
                Err(_) => tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                },
            }
        }
    });
}

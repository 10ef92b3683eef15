//! Secrets sealed at rest with the kernel's [`capsule::crypto`] keys
//! (`CAPSULE_ENCRYPTION_KEYS`): variables' values, each bound to its
//! project and name, push-event webhook secrets and deploy keys' private
//! halves, each bound to its project — a value copied to another row does
//! not open. Sealed as they are written, opened only to be returned — a
//! secret's value and a deploy key to the runner holding a deployment
//! alone.

use capsule::{
    crypto::{KEYS_VARIABLE, Keyring},
    rpc,
};
use diesel::prelude::*;
use tonic::Status;
use uuid::Uuid;

use crate::db::{DeployKey, Settings, Variable, schema::deploy_keys, schema::environment_variables};

/// Where a value belongs: the associated data it is sealed with.
fn place(project_id: Uuid, name: &str) -> Vec<u8> {
    format!("environment_variables/{project_id}/{name}").into_bytes()
}

/// Where a project's push-event webhook secret belongs.
fn webhook_place(project_id: Uuid) -> Vec<u8> {
    format!("project_settings/{project_id}/webhook_secret").into_bytes()
}

/// Where a project's deploy key belongs.
fn deploy_key_place(project_id: Uuid) -> Vec<u8> {
    format!("deploy_keys/{project_id}").into_bytes()
}

/// A project's webhook secret sealed: (text, key id).
pub fn seal_webhook_secret(keys: &Keyring, project_id: Uuid, secret: &str) -> Result<(String, String), Status> {
    keys.seal(secret, &webhook_place(project_id))
        .map(|sealed| (sealed.text, sealed.key_id))
        .map_err(|err| err.status("webhook secrets"))
}

/// A project's webhook secret as stored (sealed with `key_id`, or plain
/// when written before sealing), opened.
pub fn open_webhook_secret(
    keys: &Keyring,
    project_id: Uuid,
    text: String,
    key_id: Option<&str>,
) -> Result<String, Status> {
    match key_id {
        None => Ok(text),
        Some(key_id) => keys.open(key_id, &text, &webhook_place(project_id)).map_err(|err| {
            rpc::internal(format_args!(
                "the webhook secret of project {project_id} does not open: {err}"
            ))
        }),
    }
}

/// A deploy key's private half sealed: (text, key id).
pub fn seal_deploy_key(keys: &Keyring, project_id: Uuid, private_key: &str) -> Result<(String, String), Status> {
    keys.seal(private_key, &deploy_key_place(project_id))
        .map(|sealed| (sealed.text, sealed.key_id))
        .map_err(|err| err.status("deploy keys"))
}

/// A deploy key's private half, opened.
pub fn open_deploy_key(keys: &Keyring, key: &DeployKey) -> Result<String, Status> {
    keys.open(&key.key_id, &key.private_key, &deploy_key_place(key.project_id))
        .map_err(|err| {
            rpc::internal(format_args!(
                "the deploy key of project {} does not open: {err}",
                key.project_id
            ))
        })
}

/// `value` sealed for variable `name` of `project_id`: the text to store
/// and the id of the key that sealed it.
pub fn seal(keys: &Keyring, project_id: Uuid, name: &str, value: &str) -> Result<(String, String), Status> {
    keys.seal(value, &place(project_id, name))
        .map(|sealed| (sealed.text, sealed.key_id))
        .map_err(|err| err.status("variables"))
}

/// The variables with their values as they were given.
pub fn reveal(keys: &Keyring, project_id: Uuid, variables: Vec<Variable>) -> Result<Vec<Variable>, Status> {
    variables
        .into_iter()
        .map(|mut variable| {
            if let Some(key_id) = variable.key_id.take() {
                variable.value = keys
                    .open(&key_id, &variable.value, &place(project_id, &variable.name))
                    .map_err(|err| {
                        rpc::internal(format_args!(
                            "a stored variable of project {project_id} does not open: {err}"
                        ))
                    })?;
            }
            Ok(variable)
        })
        .collect()
}

/// The ids of the keys that sealed stored values (for
/// `capsule::db::refuse_unknown_keys`).
pub fn key_ids(conn: &mut PgConnection) -> QueryResult<Vec<String>> {
    use crate::db::schema::project_settings;
    let mut ids: Vec<String> = environment_variables::table
        .filter(environment_variables::key_id.is_not_null())
        .select(environment_variables::key_id.assume_not_null())
        .distinct()
        .load(conn)?;
    ids.extend(
        project_settings::table
            .filter(project_settings::webhook_secret_key_id.is_not_null())
            .select(project_settings::webhook_secret_key_id.assume_not_null())
            .distinct()
            .load::<String>(conn)?,
    );
    ids.extend(
        deploy_keys::table
            .select(deploy_keys::key_id)
            .distinct()
            .load::<String>(conn)?,
    );
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Seals every value not sealed by the current key under it (plain ones
/// written before sealing, and those of older keys): after this, the old
/// keys can leave `CAPSULE_ENCRYPTION_KEYS`. How many were sealed anew.
pub fn reencrypt(conn: &mut PgConnection, keys: &Keyring) -> anyhow::Result<usize> {
    let current = keys
        .current()
        .ok_or_else(|| anyhow::anyhow!("set {KEYS_VARIABLE}: its first key seals the values"))?
        .to_owned();
    let stale: Vec<(Uuid, Variable)> = environment_variables::table
        .filter(
            environment_variables::key_id
                .is_null()
                .or(environment_variables::key_id.ne(&current)),
        )
        .select((environment_variables::project_id, Variable::as_select()))
        .load(conn)?;
    let mut sealed = 0;
    for (project_id, variable) in stale {
        let (name, stored) = (variable.name.clone(), variable.value.clone());
        let Some(opened) = reveal(keys, project_id, vec![variable])?.pop() else {
            continue;
        };
        let (text, key_id) = seal(keys, project_id, &name, &opened.value)?;
        // Only the value read: one set meanwhile is newer, and stays.
        sealed += diesel::update(
            environment_variables::table
                .find((project_id, &name))
                .filter(environment_variables::value.eq(&stored)),
        )
        .set((
            environment_variables::value.eq(text),
            environment_variables::key_id.eq(key_id),
        ))
        .execute(conn)?;
    }
    for (project_id, text, key_id) in Settings::stale_webhook_secrets(conn, &current)? {
        let opened = open_webhook_secret(keys, project_id, text.clone(), key_id.as_deref())?;
        let (new, key_id) = seal_webhook_secret(keys, project_id, &opened)?;
        sealed += Settings::set_webhook_secret(conn, project_id, (&new, &key_id), Some(&text))?;
    }
    for key in DeployKey::all(conn)?.into_iter().filter(|key| key.key_id != current) {
        let opened = open_deploy_key(keys, &key)?;
        let (new, key_id) = seal_deploy_key(keys, key.project_id, &opened)?;
        sealed += DeployKey::reseal(conn, key.project_id, &key.private_key, (&new, &key_id))?;
    }
    Ok(sealed)
}

//! Variables' values sealed at rest with the kernel's [`capsule::crypto`]
//! keys (`CAPSULE_ENCRYPTION_KEYS`), each bound to its project and name:
//! a value copied to another row does not open. Sealed as they are written,
//! opened only to be returned — a secret's value to the runner holding a
//! deployment alone.

use capsule::{
    crypto::{KEYS_VARIABLE, Keyring},
    rpc,
};
use diesel::prelude::*;
use tonic::Status;
use uuid::Uuid;

use crate::db::{Variable, schema::environment_variables};

/// Where a value belongs: the associated data it is sealed with.
fn place(project_id: Uuid, name: &str) -> Vec<u8> {
    format!("environment_variables/{project_id}/{name}").into_bytes()
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
    environment_variables::table
        .filter(environment_variables::key_id.is_not_null())
        .select(environment_variables::key_id.assume_not_null())
        .distinct()
        .load(conn)
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
    Ok(sealed)
}

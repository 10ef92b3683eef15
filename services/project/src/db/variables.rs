//! A project's environment variables.

use diesel::prelude::*;
use uuid::Uuid;

use super::{Variable, schema::environment_variables, schema::projects};

/// Why a variable was not written.
#[derive(Debug, PartialEq, Eq)]
pub enum VariableRefusal {
    /// The project holds as many as it may.
    Full,
    /// The variable is (or would become) a secret, and the caller may not
    /// write secrets.
    Secret,
    NotFound,
}

impl Variable {
    /// Creates or replaces one variable under the project's row lock (so
    /// concurrent writers count in turn); a secret, new or replaced, only
    /// when `secrets` says the caller may write secrets. `sealed` is the
    /// value sealed, and the id of the key that sealed it.
    pub fn set(
        conn: &mut PgConnection,
        project_id: Uuid,
        name: &str,
        sealed: (&str, &str),
        secret: bool,
        secrets: bool,
    ) -> QueryResult<Result<Variable, VariableRefusal>> {
        conn.build_transaction().run(|conn| {
            projects::table
                .find(project_id)
                .select(projects::id)
                .for_update()
                .first::<Uuid>(conn)?;
            let existing: Option<bool> = environment_variables::table
                .find((project_id, name))
                .select(environment_variables::secret)
                .first(conn)
                .optional()?;
            if (secret || existing == Some(true)) && !secrets {
                return Ok(Err(VariableRefusal::Secret));
            }
            if existing.is_none() && Variable::count(conn, project_id)? >= crate::validate::MAX_VARIABLES {
                return Ok(Err(VariableRefusal::Full));
            }
            Variable::upsert(conn, project_id, name, sealed, secret).map(Ok)
        })
    }

    /// Removes one variable; a secret only when `secrets` says the caller
    /// may write secrets.
    pub fn remove(
        conn: &mut PgConnection,
        project_id: Uuid,
        name: &str,
        secrets: bool,
    ) -> QueryResult<Result<(), VariableRefusal>> {
        let mut target = diesel::delete(environment_variables::table.find((project_id, name))).into_boxed();
        if !secrets {
            target = target.filter(environment_variables::secret.eq(false));
        }
        if target.execute(conn)? > 0 {
            return Ok(Ok(()));
        }
        let secret: Option<bool> = environment_variables::table
            .find((project_id, name))
            .select(environment_variables::secret)
            .first(conn)
            .optional()?;
        Ok(Err(if secret.is_some() {
            VariableRefusal::Secret
        } else {
            VariableRefusal::NotFound
        }))
    }

    pub fn list(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<Vec<Variable>> {
        environment_variables::table
            .filter(environment_variables::project_id.eq(project_id))
            .select(Variable::as_select())
            .order(environment_variables::name.asc())
            .load(conn)
    }

    pub fn count(conn: &mut PgConnection, project_id: Uuid) -> QueryResult<i64> {
        environment_variables::table
            .filter(environment_variables::project_id.eq(project_id))
            .count()
            .get_result(conn)
    }

    pub fn upsert(
        conn: &mut PgConnection,
        project_id: Uuid,
        name: &str,
        (value, key_id): (&str, &str),
        secret: bool,
    ) -> QueryResult<Variable> {
        diesel::insert_into(environment_variables::table)
            .values((
                environment_variables::project_id.eq(project_id),
                environment_variables::name.eq(name),
                environment_variables::value.eq(value),
                environment_variables::secret.eq(secret),
                environment_variables::key_id.eq(key_id),
            ))
            .on_conflict((environment_variables::project_id, environment_variables::name))
            .do_update()
            .set((
                environment_variables::value.eq(value),
                environment_variables::secret.eq(secret),
                environment_variables::key_id.eq(key_id),
            ))
            .returning(Variable::as_returning())
            .get_result(conn)
    }
}

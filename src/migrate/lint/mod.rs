//! `capsule migrate <svc> lint`: warnings about migrations that would hurt
//! a running system, before they ship — in the spirit of squawk and
//! strong_migrations, on PostgreSQL's own parse tree (pg_query).
//!
//! Only migrations added since the last release are checked by default
//! (`migrations/released.toml` names each service's newest released
//! version); the previous release's schema is what those released
//! migrations create. Tables created since the release are new, so locking
//! them costs nothing. A rule is waived for one migration in its
//! `metadata.toml`, with a reason:
//!
//! ```toml
//! [lint]
//! index-not-concurrently = "audit_events is written only by this release"
//! ```

mod rules;
#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, collections::BTreeSet, fmt};

pub use rules::Rule;

use super::{
    error::MigrateError,
    set::{MigrationFile, files},
};
use crate::config::ServiceKind;

/// One thing the linter found in one migration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub service: ServiceKind,
    pub version: String,
    /// The file to look at, from the repository's root.
    pub file: String,
    pub rule: Rule,
    /// 1-based, when the finding is about one statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statement: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// What the statement does.
    pub what: String,
    pub why: &'static str,
    pub instead: &'static str,
    /// The reason given in `metadata.toml`, when the rule is waived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waived: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(statement) = self.statement {
            write!(f, " (statement {statement})")?;
        }
        write!(f, ": {} [{}]", self.what, self.rule.id())?;
        match &self.waived {
            Some(reason) => write!(f, "\n    waived: {reason}"),
            None => write!(
                f,
                "\n    why: {}\n    instead: {}\n    or, if it is safe here, waive it in metadata.toml: [lint] {} = \"why\"",
                self.why,
                self.instead,
                self.rule.id()
            ),
        }
    }
}

/// The newest migration of `service` in the last release, from
/// `migrations/released.toml` as built in.
pub fn last_release(service: ServiceKind) -> Result<Option<String>, MigrateError> {
    let table: toml::Table = files::RELEASED
        .parse()
        .map_err(|err| MigrateError::Other(format!("migrations/released.toml does not parse: {err}")))?;
    match table.get(service.name()) {
        None => Ok(None),
        Some(toml::Value::String(version)) => Ok(Some(version.clone())),
        Some(other) => Err(MigrateError::Other(format!(
            "migrations/released.toml: {} must be a version such as \"V007\", not {other}",
            service.name()
        ))),
    }
}

/// Lints a service's migrations after `after` (every one without it, each
/// against the ones before it).
pub fn lint(service: ServiceKind, files: &[MigrationFile], after: Option<&str>) -> Vec<Finding> {
    let mut released_tables = BTreeSet::new();
    let mut released_columns = BTreeSet::new();
    let mut new_tables = BTreeSet::new();
    let mut findings = Vec::new();
    for file in files {
        let parsed = pg_query::parse(file.up, pg_query::ParserOptions::DEFAULT);
        let statements: Vec<(pg_query::NodeEnum, i32)> = parsed
            .as_ref()
            .map(|parsed| {
                parsed
                    .protobuf
                    .stmts
                    .iter()
                    .filter_map(|raw| Some((raw.stmt.as_ref()?.node.clone()?, raw.stmt_location)))
                    .collect()
            })
            .unwrap_or_default();
        if after.is_some_and(|after| file.version <= after) {
            for (statement, _) in &statements {
                rules::track(statement, &mut released_tables, &mut released_columns);
            }
            continue;
        }
        let path = |name: &str| format!("migrations/{}/{}/{name}", service, file.name);
        let finding = |rule: Rule, what: String, statement: Option<(usize, usize)>| Finding {
            service,
            version: file.version.to_owned(),
            file: path(if rule == Rule::MissingDown {
                "down.sql"
            } else if rule == Rule::BadWaiver {
                "metadata.toml"
            } else {
                "up.sql"
            }),
            rule,
            statement: statement.map(|(index, _)| index),
            line: statement.map(|(_, line)| line),
            what,
            why: rule.why(),
            instead: rule.instead(),
            waived: None,
        };
        let mut found = Vec::new();
        if file.down.is_none() {
            found.push(finding(Rule::MissingDown, "no down.sql".to_owned(), None));
        }
        if let Err(err) = &parsed {
            found.push(finding(Rule::Unparsable, err.to_string(), None));
        }
        let mut here = new_tables.clone();
        for (index, (statement, location)) in statements.iter().enumerate() {
            let context = rules::Context {
                released_tables: &released_tables,
                released_columns: &released_columns,
                new_tables: &here,
                transactional: file.run_in_transaction,
                statements: statements.len(),
            };
            let at = Some((index + 1, line_of(file.up, *location)));
            found.extend(
                rules::check(statement, &context)
                    .into_iter()
                    .map(|(rule, what)| finding(rule, what, at)),
            );
            if let pg_query::NodeEnum::CreateStmt(create) = statement
                && let Some(relation) = &create.relation
            {
                here.insert(relation.relname.clone());
            }
        }
        let (waivers, problems) = waivers(file);
        for finding in &mut found {
            finding.waived = waivers.get(&finding.rule).cloned();
        }
        found.extend(
            problems
                .into_iter()
                .map(|problem| finding(Rule::BadWaiver, problem, None)),
        );
        findings.extend(found);
        if after.is_some() {
            new_tables = here;
        } else {
            for (statement, _) in &statements {
                rules::track(statement, &mut released_tables, &mut released_columns);
            }
        }
    }
    findings
}

/// The line of a statement's first token: its location counts from the
/// end of the previous statement, comments and blank lines included.
fn line_of(sql: &str, location: i32) -> usize {
    let start = usize::try_from(location).unwrap_or(0).min(sql.len());
    let mut rest = &sql[start..];
    loop {
        let trimmed = rest.trim_start();
        if let Some(comment) = trimmed.strip_prefix("--") {
            rest = comment.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(comment) = trimmed.strip_prefix("/*") {
            rest = comment.split_once("*/").map_or("", |(_, after)| after);
        } else {
            rest = trimmed;
            break;
        }
    }
    let offset = sql.len() - rest.len();
    sql[..offset].matches('\n').count() + 1
}

/// The waivers in a migration's `metadata.toml`, and what is wrong with
/// the ones that cannot count.
fn waivers(file: &MigrationFile) -> (BTreeMap<Rule, String>, Vec<String>) {
    let mut waived = BTreeMap::new();
    let mut problems = Vec::new();
    if file.metadata.trim().is_empty() {
        return (waived, problems);
    }
    let table = match file.metadata.parse::<toml::Table>() {
        Ok(table) => table,
        Err(err) => {
            problems.push(format!("metadata.toml does not parse: {err}"));
            return (waived, problems);
        }
    };
    let Some(lint) = table.get("lint") else {
        return (waived, problems);
    };
    let Some(lint) = lint.as_table() else {
        problems.push("[lint] must be a table of rule-name = \"why it is safe here\"".to_owned());
        return (waived, problems);
    };
    for (name, reason) in lint {
        match (Rule::from_id(name), reason.as_str().map(str::trim)) {
            (None | Some(Rule::BadWaiver | Rule::Unparsable), _) => problems.push(format!(
                "[lint] {name} is not a rule that can be waived; they are: {}",
                Rule::ALL
                    .iter()
                    .filter(|rule| !matches!(rule, Rule::BadWaiver | Rule::Unparsable))
                    .map(|rule| rule.id())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            (Some(rule), Some(reason)) if !reason.is_empty() => {
                waived.insert(rule, reason.to_owned());
            }
            (Some(_), _) => problems.push(format!(
                "[lint] {name} has no reason: write {name} = \"why it is safe here\""
            )),
        }
    }
    (waived, problems)
}

//! The rules, one statement at a time, on PostgreSQL's own parse tree.

use std::collections::BTreeSet;

use pg_query::{
    NodeEnum, NodeRef,
    protobuf::{AlterTableType, ColumnDef, ConstrType, ObjectType, RangeVar},
};

/// What the linter warns about: each rule says why and what to do instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    VolatileDefault,
    AlterColumnType,
    IndexNotConcurrently,
    ConcurrentlyInTransaction,
    SetNotNull,
    ConstraintNotValid,
    UniqueConstraint,
    DropReleased,
    Rename,
    MissingDown,
    Unparsable,
    BadWaiver,
}

impl Rule {
    pub const ALL: [Self; 12] = [
        Self::VolatileDefault,
        Self::AlterColumnType,
        Self::IndexNotConcurrently,
        Self::ConcurrentlyInTransaction,
        Self::SetNotNull,
        Self::ConstraintNotValid,
        Self::UniqueConstraint,
        Self::DropReleased,
        Self::Rename,
        Self::MissingDown,
        Self::Unparsable,
        Self::BadWaiver,
    ];

    /// The name used in reports and in `metadata.toml` waivers.
    pub const fn id(self) -> &'static str {
        match self {
            Self::VolatileDefault => "volatile-default",
            Self::AlterColumnType => "alter-column-type",
            Self::IndexNotConcurrently => "index-not-concurrently",
            Self::ConcurrentlyInTransaction => "concurrently-in-transaction",
            Self::SetNotNull => "set-not-null",
            Self::ConstraintNotValid => "constraint-not-valid",
            Self::UniqueConstraint => "unique-constraint",
            Self::DropReleased => "drop-released",
            Self::Rename => "rename",
            Self::MissingDown => "missing-down",
            Self::Unparsable => "unparsable",
            Self::BadWaiver => "bad-waiver",
        }
    }

    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|rule| rule.id() == id)
    }

    /// Why it hurts in production.
    pub const fn why(self) -> &'static str {
        match self {
            Self::VolatileDefault => {
                "a volatile default (random(), gen_random_uuid(), clock_timestamp(), a serial …) is computed for every \
                 existing row: the whole table is rewritten under an ACCESS EXCLUSIVE lock, and every read and write \
                 of it waits"
            }
            Self::AlterColumnType => {
                "changing a column's type rewrites the table and rebuilds its indexes under an ACCESS EXCLUSIVE lock \
                 (only a few changes, such as varchar(n) to text, are free); the previous release may also not read \
                 the new type"
            }
            Self::IndexNotConcurrently => {
                "CREATE INDEX without CONCURRENTLY blocks every write to the table until the index is built"
            }
            Self::ConcurrentlyInTransaction => {
                "CONCURRENTLY cannot run inside a transaction block: in a transactional migration, or beside other \
                 statements in one file (a multi-statement file runs as one implicit transaction), it fails"
            }
            Self::SetNotNull => "SET NOT NULL scans the whole table for NULLs while holding an ACCESS EXCLUSIVE lock",
            Self::ConstraintNotValid => {
                "adding a CHECK or FOREIGN KEY constraint checks every existing row while holding a lock that blocks \
                 writes (a foreign key locks the referenced table too)"
            }
            Self::UniqueConstraint => {
                "adding a UNIQUE, PRIMARY KEY or EXCLUDE constraint builds its index while holding an ACCESS EXCLUSIVE \
                 lock"
            }
            Self::DropReleased => {
                "the previous release still reads and writes it: during a rolling update, and after a rollback, its \
                 queries fail"
            }
            Self::Rename => {
                "the previous release still uses the old name: during a rolling update, and after a rollback, its \
                 queries fail"
            }
            Self::MissingDown => "without down.sql, revert and redo cannot undo it",
            Self::Unparsable => "PostgreSQL's parser rejects it: the migration would fail when applied",
            Self::BadWaiver => "a waiver must name a rule and say why it is safe",
        }
    }

    /// The safe way to get the same result.
    pub const fn instead(self) -> &'static str {
        match self {
            Self::VolatileDefault => {
                "add the column without a default (or with a constant one), then ALTER COLUMN … SET DEFAULT for new \
                 rows, and fill existing rows in batches"
            }
            Self::AlterColumnType => {
                "add a column of the new type, write both, backfill in batches, switch reads, and drop the old column \
                 in a later release"
            }
            Self::IndexNotConcurrently => {
                "CREATE INDEX CONCURRENTLY, alone in a migration whose metadata.toml says run_in_transaction = false"
            }
            Self::ConcurrentlyInTransaction => {
                "put the statement alone in its own migration, with run_in_transaction = false in its metadata.toml"
            }
            Self::SetNotNull => {
                "ADD CONSTRAINT … CHECK (column IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT in a later migration, \
                 then SET NOT NULL (PostgreSQL uses the valid constraint instead of scanning) and drop the check"
            }
            Self::ConstraintNotValid => {
                "ADD CONSTRAINT … NOT VALID (new rows are checked at once), then VALIDATE CONSTRAINT in a later \
                 migration: it checks old rows without blocking writes"
            }
            Self::UniqueConstraint => {
                "CREATE UNIQUE INDEX CONCURRENTLY in its own migration, then ADD CONSTRAINT … UNIQUE USING INDEX"
            }
            Self::DropReleased => {
                "stop using it in one release, and drop it in the next, once no running release reads it (then waive \
                 this rule, saying since which release nothing uses it)"
            }
            Self::Rename => {
                "add the new name beside the old one (a new column written by both releases, or a view), move reads \
                 to it, and drop the old name in a later release"
            }
            Self::MissingDown => "write down.sql; if the change truly cannot be undone, waive this rule and say so",
            Self::Unparsable => "fix the SQL: the message says where PostgreSQL's parser stopped",
            Self::BadWaiver => {
                "write [lint] in metadata.toml as rule-name = \"why it is safe here\", with one of the rule names \
                 this linter reports"
            }
        }
    }
}

/// What a statement is checked against.
pub(super) struct Context<'a> {
    /// Tables and columns of the previous release's schema.
    pub released_tables: &'a BTreeSet<String>,
    pub released_columns: &'a BTreeSet<(String, String)>,
    /// Tables created since the previous release (earlier in this file or
    /// by a newer migration before it): empty in production, so locking
    /// them costs nothing.
    pub new_tables: &'a BTreeSet<String>,
    /// Whether the migration runs in one transaction, and how many
    /// statements its file has.
    pub transactional: bool,
    pub statements: usize,
}

impl Context<'_> {
    fn existing(&self, table: &str) -> bool {
        !self.new_tables.contains(table)
    }
}

fn table(relation: Option<&RangeVar>) -> String {
    relation.map(|relation| relation.relname.clone()).unwrap_or_default()
}

/// The last name of a qualified name (`public.users` → `users`).
fn last_name(names: &[pg_query::Node]) -> String {
    names
        .iter()
        .filter_map(|name| match &name.node {
            Some(NodeEnum::String(value)) => Some(value.sval.clone()),
            _ => None,
        })
        .next_back()
        .unwrap_or_default()
}

/// Functions a default may call without a rewrite: stable or immutable.
const STABLE_FUNCTIONS: &[&str] = &[
    "now",
    "statement_timestamp",
    "transaction_timestamp",
    "current_setting",
    "lower",
    "upper",
    "btrim",
    "length",
    "concat",
    "to_char",
    "to_timestamp",
    "make_interval",
    "jsonb_build_object",
    "jsonb_build_array",
    "json_build_object",
    "json_build_array",
    "array_length",
];

/// The column's default, when it computes something per row: the volatile
/// call, or the serial type.
fn volatile_default(column: &ColumnDef) -> Option<String> {
    let type_name = column
        .type_name
        .as_ref()
        .map(|name| last_name(&name.names))
        .unwrap_or_default();
    if ["serial", "serial2", "serial4", "serial8", "smallserial", "bigserial"].contains(&type_name.as_str()) {
        return Some(format!("type {type_name} (a sequence's nextval() per row)"));
    }
    let defaults = column
        .constraints
        .iter()
        .filter_map(|constraint| match &constraint.node {
            Some(NodeEnum::Constraint(c)) if c.contype == ConstrType::ConstrDefault as i32 => c.raw_expr.as_deref(),
            Some(NodeEnum::Constraint(c)) if c.contype == ConstrType::ConstrIdentity as i32 => None,
            _ => None,
        })
        .chain(column.raw_default.as_deref());
    for expression in defaults {
        let Some(node) = &expression.node else { continue };
        let calls = std::iter::once(node.to_ref()).chain(node.nodes().into_iter().map(|(node, ..)| node));
        for call in calls {
            if let NodeRef::FuncCall(call) = call {
                let name = last_name(&call.funcname);
                if !STABLE_FUNCTIONS.contains(&name.as_str()) {
                    return Some(format!("DEFAULT {name}()"));
                }
            }
        }
    }
    None
}

/// The rules one statement breaks, with what it does.
pub(super) fn check(statement: &NodeEnum, context: &Context<'_>) -> Vec<(Rule, String)> {
    let mut found = Vec::new();
    match statement {
        NodeEnum::AlterTableStmt(alter) if alter.objtype == ObjectType::ObjectTable as i32 => {
            let table = table(alter.relation.as_ref());
            let existing = context.existing(&table);
            for command in &alter.cmds {
                let Some(NodeEnum::AlterTableCmd(command)) = &command.node else {
                    continue;
                };
                let definition = command.def.as_deref().and_then(|def| def.node.as_ref());
                match AlterTableType::try_from(command.subtype) {
                    Ok(AlterTableType::AtAddColumn) if existing => {
                        if let Some(NodeEnum::ColumnDef(column)) = definition
                            && let Some(what) = volatile_default(column)
                        {
                            found.push((
                                Rule::VolatileDefault,
                                format!("ADD COLUMN {} on {table} with {what}", column.colname),
                            ));
                        }
                    }
                    Ok(AlterTableType::AtAlterColumnType) if existing => found.push((
                        Rule::AlterColumnType,
                        format!("ALTER COLUMN {} TYPE on {table}", command.name),
                    )),
                    Ok(AlterTableType::AtSetNotNull) if existing => found.push((
                        Rule::SetNotNull,
                        format!("ALTER COLUMN {} SET NOT NULL on {table}", command.name),
                    )),
                    Ok(AlterTableType::AtAddConstraint) if existing => {
                        let Some(NodeEnum::Constraint(constraint)) = definition else {
                            continue;
                        };
                        let kind = ConstrType::try_from(constraint.contype);
                        if matches!(kind, Ok(ConstrType::ConstrCheck | ConstrType::ConstrForeign))
                            && !constraint.skip_validation
                        {
                            found.push((
                                Rule::ConstraintNotValid,
                                format!(
                                    "ADD CONSTRAINT {} on {table} without NOT VALID",
                                    if constraint.conname.is_empty() {
                                        "(unnamed)"
                                    } else {
                                        &constraint.conname
                                    }
                                ),
                            ));
                        }
                        if matches!(
                            kind,
                            Ok(ConstrType::ConstrUnique | ConstrType::ConstrPrimary | ConstrType::ConstrExclusion)
                        ) && constraint.indexname.is_empty()
                        {
                            found.push((
                                Rule::UniqueConstraint,
                                format!("ADD CONSTRAINT on {table} builds an index without CONCURRENTLY"),
                            ));
                        }
                    }
                    Ok(AlterTableType::AtDropColumn)
                        if context
                            .released_columns
                            .contains(&(table.clone(), command.name.clone())) =>
                    {
                        found.push((Rule::DropReleased, format!("DROP COLUMN {} of {table}", command.name)));
                    }
                    _ => {}
                }
            }
        }
        NodeEnum::IndexStmt(index) => {
            let table = table(index.relation.as_ref());
            if index.concurrent {
                if context.transactional || context.statements > 1 {
                    found.push((
                        Rule::ConcurrentlyInTransaction,
                        format!("CREATE INDEX CONCURRENTLY on {table}"),
                    ));
                }
            } else if context.existing(&table) {
                found.push((
                    Rule::IndexNotConcurrently,
                    format!("CREATE INDEX {} on {table}", index.idxname),
                ));
            }
        }
        NodeEnum::DropStmt(drop) => {
            if drop.concurrent && (context.transactional || context.statements > 1) {
                found.push((Rule::ConcurrentlyInTransaction, "DROP INDEX CONCURRENTLY".to_owned()));
            }
            if drop.remove_type == ObjectType::ObjectTable as i32 {
                for object in &drop.objects {
                    if let Some(NodeEnum::List(names)) = &object.node {
                        let name = last_name(&names.items);
                        if context.released_tables.contains(&name) {
                            found.push((Rule::DropReleased, format!("DROP TABLE {name}")));
                        }
                    }
                }
            }
        }
        NodeEnum::RenameStmt(rename) => {
            let table = table(rename.relation.as_ref());
            let renamed = match ObjectType::try_from(rename.rename_type) {
                Ok(ObjectType::ObjectTable) if context.released_tables.contains(&table) => {
                    Some(format!("table {table}"))
                }
                Ok(ObjectType::ObjectColumn)
                    if context
                        .released_columns
                        .contains(&(table.clone(), rename.subname.clone())) =>
                {
                    Some(format!("column {}.{}", table, rename.subname))
                }
                _ => None,
            };
            if let Some(what) = renamed {
                found.push((Rule::Rename, format!("RENAME {what} to {}", rename.newname)));
            }
        }
        _ => {}
    }
    found
}

/// Keeps `tables` and `columns` up to date with what a statement creates,
/// drops or renames.
pub(super) fn track(statement: &NodeEnum, tables: &mut BTreeSet<String>, columns: &mut BTreeSet<(String, String)>) {
    match statement {
        NodeEnum::CreateStmt(create) => {
            let table = table(create.relation.as_ref());
            for element in &create.table_elts {
                if let Some(NodeEnum::ColumnDef(column)) = &element.node {
                    columns.insert((table.clone(), column.colname.clone()));
                }
            }
            tables.insert(table);
        }
        NodeEnum::AlterTableStmt(alter) => {
            let table = table(alter.relation.as_ref());
            for command in &alter.cmds {
                let Some(NodeEnum::AlterTableCmd(command)) = &command.node else {
                    continue;
                };
                match (AlterTableType::try_from(command.subtype), command.def.as_deref()) {
                    (Ok(AlterTableType::AtAddColumn), Some(def)) => {
                        if let Some(NodeEnum::ColumnDef(column)) = &def.node {
                            columns.insert((table.clone(), column.colname.clone()));
                        }
                    }
                    (Ok(AlterTableType::AtDropColumn), _) => {
                        columns.remove(&(table.clone(), command.name.clone()));
                    }
                    _ => {}
                }
            }
        }
        NodeEnum::DropStmt(drop) if drop.remove_type == ObjectType::ObjectTable as i32 => {
            for object in &drop.objects {
                if let Some(NodeEnum::List(names)) = &object.node {
                    let name = last_name(&names.items);
                    columns.retain(|(table, _)| *table != name);
                    tables.remove(&name);
                }
            }
        }
        NodeEnum::RenameStmt(rename) => {
            let table = table(rename.relation.as_ref());
            match ObjectType::try_from(rename.rename_type) {
                Ok(ObjectType::ObjectTable) => {
                    if tables.remove(&table) {
                        tables.insert(rename.newname.clone());
                    }
                    let moved: Vec<_> = columns.iter().filter(|(t, _)| *t == table).cloned().collect();
                    for (_, column) in moved {
                        columns.remove(&(table.clone(), column.clone()));
                        columns.insert((rename.newname.clone(), column));
                    }
                }
                Ok(ObjectType::ObjectColumn) => {
                    let known = columns.remove(&(table.clone(), rename.subname.clone()));
                    if known {
                        columns.insert((table, rename.newname.clone()));
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
}

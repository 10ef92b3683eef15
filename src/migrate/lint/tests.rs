//! Each rule on a migration that breaks it and on one that does the same
//! safely; waivers; the release boundary.

use super::*;

/// A migration as built in, from its parts.
fn file(version: &'static str, up: &'static str, transactional: bool, metadata: &'static str) -> MigrationFile {
    MigrationFile {
        version,
        name: Box::leak(format!("{version}__test").into_boxed_str()),
        description: "test",
        up,
        down: Some("-- undo"),
        sha256: "",
        run_in_transaction: transactional,
        metadata,
    }
}

const RELEASED: &str = "CREATE TABLE users (id BIGINT PRIMARY KEY, email TEXT, name TEXT, team_id BIGINT);\n\
                        CREATE TABLE teams (id BIGINT PRIMARY KEY);";

/// The rules a new migration `up` breaks, after a release that has users
/// and teams.
fn rules(up: &'static str) -> Vec<Rule> {
    rules_of(file("V002", up, true, ""))
}

fn rules_of(new: MigrationFile) -> Vec<Rule> {
    let files = [file("V001", RELEASED, true, ""), new];
    lint(ServiceKind::Project, &files, Some("V001"))
        .into_iter()
        .filter(|finding| finding.waived.is_none())
        .map(|finding| finding.rule)
        .collect()
}

#[test]
fn each_rule_flags_the_dangerous_form_and_passes_the_safe_one() {
    let cases: &[(Rule, &str, &str)] = &[
        (
            Rule::VolatileDefault,
            "ALTER TABLE users ADD COLUMN token UUID NOT NULL DEFAULT gen_random_uuid();",
            "ALTER TABLE users ADD COLUMN joined_at TIMESTAMPTZ NOT NULL DEFAULT now();",
        ),
        (
            Rule::VolatileDefault,
            "ALTER TABLE users ADD COLUMN seq BIGSERIAL;",
            "ALTER TABLE users ADD COLUMN plan TEXT NOT NULL DEFAULT 'free';",
        ),
        (
            Rule::AlterColumnType,
            "ALTER TABLE users ALTER COLUMN name TYPE VARCHAR(80);",
            "ALTER TABLE users ADD COLUMN display_name VARCHAR(80);",
        ),
        (
            Rule::IndexNotConcurrently,
            "CREATE INDEX idx_users_email ON users (email);",
            "CREATE TABLE audit (id BIGINT, at TIMESTAMPTZ); CREATE INDEX idx_audit_at ON audit (at);",
        ),
        (
            Rule::SetNotNull,
            "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
            "ALTER TABLE users ADD CONSTRAINT users_email_present CHECK (email IS NOT NULL) NOT VALID;",
        ),
        (
            Rule::ConstraintNotValid,
            "ALTER TABLE users ADD CONSTRAINT users_team FOREIGN KEY (team_id) REFERENCES teams (id);",
            "ALTER TABLE users ADD CONSTRAINT users_team FOREIGN KEY (team_id) REFERENCES teams (id) NOT VALID;",
        ),
        (
            Rule::ConstraintNotValid,
            "ALTER TABLE users ADD CONSTRAINT users_name_length CHECK (length(name) < 200);",
            "ALTER TABLE users VALIDATE CONSTRAINT users_name_length;",
        ),
        (
            Rule::UniqueConstraint,
            "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);",
            "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX idx_users_email_unique;",
        ),
        (
            Rule::DropReleased,
            "ALTER TABLE users DROP COLUMN name;",
            "ALTER TABLE users ADD COLUMN nickname TEXT; ALTER TABLE users DROP COLUMN nickname;",
        ),
        (
            Rule::DropReleased,
            "DROP TABLE teams;",
            "CREATE TABLE scratch (id INT); DROP TABLE scratch;",
        ),
        (
            Rule::Rename,
            "ALTER TABLE users RENAME COLUMN name TO full_name;",
            "ALTER TABLE users ADD COLUMN full_name TEXT;",
        ),
        (
            Rule::Rename,
            "ALTER TABLE teams RENAME TO groups;",
            "CREATE VIEW groups AS SELECT * FROM teams;",
        ),
        (Rule::Unparsable, "ALTER TABLE users ADD COLUMN;", "SELECT 1;"),
    ];
    for (rule, bad, good) in cases {
        assert_eq!(rules(bad), [*rule], "{bad}");
        assert_eq!(rules(good), [], "{good}");
    }
}

#[test]
fn concurrently_needs_a_migration_of_its_own_outside_a_transaction() {
    let index = "CREATE INDEX CONCURRENTLY idx_users_email ON users (email);";
    assert_eq!(
        rules_of(file("V002", index, true, "")),
        [Rule::ConcurrentlyInTransaction]
    );
    let crowded = "CREATE INDEX CONCURRENTLY idx_users_email ON users (email); SELECT 1;";
    assert_eq!(
        rules_of(file("V002", crowded, false, "")),
        [Rule::ConcurrentlyInTransaction]
    );
    assert_eq!(rules_of(file("V002", index, false, "")), []);
    let drop = "DROP INDEX CONCURRENTLY IF EXISTS idx_users_email;";
    assert_eq!(
        rules_of(file("V002", drop, true, "")),
        [Rule::ConcurrentlyInTransaction]
    );
    assert_eq!(rules_of(file("V002", drop, false, "")), []);
}

#[test]
fn a_migration_without_down_sql_is_flagged() {
    let mut new = file("V002", "SELECT 1;", true, "");
    new.down = None;
    assert_eq!(rules_of(new), [Rule::MissingDown]);
}

#[test]
fn a_waiver_needs_a_known_rule_and_a_reason() {
    let bad = "CREATE INDEX idx_users_email ON users (email);";
    let waived = file(
        "V002",
        bad,
        true,
        "[lint]\nindex-not-concurrently = \"users has under a hundred rows on every installation\"\n",
    );
    let files = [file("V001", RELEASED, true, ""), waived];
    let findings = lint(ServiceKind::Auth, &files, Some("V001"));
    assert_eq!(findings.len(), 1);
    assert_eq!(
        findings[0].waived.as_deref(),
        Some("users has under a hundred rows on every installation")
    );
    assert!(findings[0].to_string().contains("waived: users has under"));

    for metadata in [
        "[lint]\nindex-not-concurently = \"typo\"\n",
        "[lint]\nindex-not-concurrently = \"  \"\n",
        "[lint]\nbad-waiver = \"no\"\n",
        "[lint\n",
    ] {
        let found = rules_of(file("V002", bad, true, metadata));
        assert!(
            found.contains(&Rule::IndexNotConcurrently) && found.contains(&Rule::BadWaiver),
            "{metadata}: {found:?}"
        );
    }
}

#[test]
fn only_migrations_after_the_release_are_checked_and_new_tables_are_free() {
    let files = [
        file("V001", RELEASED, true, ""),
        file("V002", "CREATE TABLE audit (id BIGINT, at TIMESTAMPTZ);", true, ""),
        file(
            "V003",
            "CREATE INDEX idx_audit_at ON audit (at); DROP TABLE audit;",
            true,
            "",
        ),
    ];
    // audit is created after the release: empty in production.
    assert!(lint(ServiceKind::Deploy, &files, Some("V001")).is_empty());
    // After V002's release it has rows, and the release reads it.
    let rules: Vec<Rule> = lint(ServiceKind::Deploy, &files, Some("V002"))
        .into_iter()
        .map(|finding| finding.rule)
        .collect();
    assert_eq!(rules, [Rule::IndexNotConcurrently, Rule::DropReleased]);
    // Without a release, each migration against the ones before it.
    assert_eq!(lint(ServiceKind::Deploy, &files, None).len(), 2);
}

#[test]
fn a_finding_names_file_line_rule_and_the_safe_alternative() {
    let up = "-- V002: index emails\n-- (a header)\n\nCREATE INDEX idx_users_email\n    ON users (email);\n";
    let files = [file("V001", RELEASED, true, ""), file("V002", up, true, "")];
    let findings = lint(ServiceKind::Auth, &files, Some("V001"));
    let text = findings[0].to_string();
    assert_eq!(findings[0].line, Some(4), "{text}");
    for needle in [
        "migrations/auth/V002__test/up.sql:4 (statement 1)",
        "CREATE INDEX idx_users_email on users [index-not-concurrently]",
        "blocks every write",
        "instead: CREATE INDEX CONCURRENTLY",
        "[lint] index-not-concurrently = \"why\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from: {text}");
    }
}

#[test]
fn the_release_marker_names_versions_every_service_has() {
    for (service, files) in [
        (ServiceKind::Auth, files::AUTH),
        (ServiceKind::Project, files::PROJECT),
        (ServiceKind::Deploy, files::DEPLOY),
    ] {
        let released = last_release(service).unwrap().unwrap();
        assert!(
            files.iter().any(|file| file.version == released),
            "migrations/released.toml names {released} for {service}, which has no such migration"
        );
    }
}

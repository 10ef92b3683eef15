-- V022__create_app_databases
-- Description: managed PostgreSQL databases of projects' environments on
-- the apps' server (one per project and environment; the database and
-- its role share one generated name; the role's password sealed like
-- webhooks' secrets), their backups (pg_dump files kept by digest in
-- DEPLOY_BACKUPS_DIR) and the open previews of pull and merge requests.
-- Any deploy service may take a database's scheduled backup; one at a
-- time holds it (backup_lease_until).
-- Rollback: down.sql drops the three tables; the previous release injects
-- no DATABASE_URL and ignores pull request events.

CREATE TABLE app_databases (
    id UUID PRIMARY KEY,
    project_id UUID NOT NULL,
    environment VARCHAR(64) NOT NULL,
    -- The database's and its role's name on the apps' server.
    name VARCHAR(63) NOT NULL,
    password_sealed TEXT NOT NULL,
    key_id VARCHAR(64) NOT NULL,
    connection_limit INTEGER NOT NULL CHECK (connection_limit > 0),
    statement_timeout_secs INTEGER NOT NULL CHECK (statement_timeout_secs > 0),
    -- Set once the role and the database exist on the server.
    ready_at TIMESTAMPTZ,
    next_backup_at TIMESTAMPTZ NOT NULL,
    backup_lease_until TIMESTAMPTZ,
    creator_id UUID,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX app_databases_environment_key ON app_databases (project_id, environment);
CREATE UNIQUE INDEX app_databases_name_key ON app_databases (name);
CREATE INDEX app_databases_backups_due ON app_databases (next_backup_at);

CREATE TABLE app_database_backups (
    id UUID PRIMARY KEY,
    database_id UUID NOT NULL REFERENCES app_databases (id) ON DELETE CASCADE,
    project_id UUID NOT NULL,
    environment VARCHAR(64) NOT NULL,
    reason VARCHAR(16) NOT NULL CHECK (reason IN ('scheduled', 'release', 'manual', 'preview')),
    size_bytes BIGINT NOT NULL CHECK (size_bytes >= 0),
    -- sha256:<hex> of the dump, also its file's name.
    digest VARCHAR(80) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX app_database_backups_by_database ON app_database_backups (database_id, created_at DESC);

CREATE TABLE previews (
    project_id UUID NOT NULL,
    number INTEGER NOT NULL CHECK (number > 0),
    environment VARCHAR(64) NOT NULL,
    head_sha VARCHAR(40) NOT NULL,
    opened_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, number)
);

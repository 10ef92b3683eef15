-- V020__create_runs
-- Description: one-off commands and cron entries' runs. Each runs from
-- the release of an environment's live deployment, in a fresh sandbox on
-- whichever runner claims it; its lines are that deployment's, marked
-- "run.<id>". A cron entry has at most one run queued or running (a
-- unique index: runs never overlap, even with several deploy services
-- scheduling), and cron_slots keeps the last time each entry was due, so
-- missed times are skipped rather than made up. A NOTIFY on its own
-- channel at every change wakes runners' claims and the streams that
-- follow a run (and not the gateways' route watches).
-- Rollback: down.sql drops both tables; the previous release has no runs.

CREATE TABLE runs (
    id UUID PRIMARY KEY,
    project_id UUID NOT NULL,
    deployment_id UUID NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    environment VARCHAR(64) NOT NULL,
    kind VARCHAR(16) NOT NULL CHECK (kind IN ('command', 'cron')),
    -- A cron entry's name; empty for a one-off command.
    name VARCHAR(64) NOT NULL DEFAULT '',
    command TEXT NOT NULL,
    state VARCHAR(16) NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    exit_code INTEGER,
    status_message VARCHAR(1024) NOT NULL DEFAULT '',
    time_limit_secs INTEGER NOT NULL CHECK (time_limit_secs > 0),
    creator_id UUID,
    runner_id VARCHAR(128),
    -- A cron run: the time it was due.
    scheduled_for TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ
);

CREATE INDEX runs_queued ON runs (created_at) WHERE state = 'queued';
CREATE INDEX runs_by_project ON runs (project_id, created_at DESC);
CREATE UNIQUE INDEX runs_one_at_a_time ON runs (project_id, environment, name)
    WHERE kind = 'cron' AND state IN ('queued', 'running');

CREATE TABLE cron_slots (
    project_id UUID NOT NULL,
    environment VARCHAR(64) NOT NULL,
    name VARCHAR(64) NOT NULL,
    last_due TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (project_id, environment, name)
);

CREATE FUNCTION notify_run_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('runs', NEW.id::text || ':' || NEW.state);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER runs_notify
    AFTER INSERT OR UPDATE OF state ON runs
    FOR EACH ROW EXECUTE FUNCTION notify_run_change();

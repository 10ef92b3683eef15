-- V005__add_runners_and_log_retention
-- Description: registered runners, each with its own token (only its
-- SHA-256 is kept); when a deployment's logs were pruned; and no more
-- variables in deployment snapshots: a runner gets them from the project
-- service when it claims the deployment, so secret values never rest here.
-- Rollback: down.sql drops the table, column and index. The variables taken
-- out of old snapshots are not restored (runners no longer read them).

CREATE TABLE runners (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(128) NOT NULL UNIQUE,
    token_hash BYTEA NOT NULL UNIQUE,
    -- The admin who registered it; NULL for a service's own local runner.
    created_by UUID,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ
);

ALTER TABLE deployments ADD COLUMN logs_pruned_at TIMESTAMPTZ;

-- Settled deployments whose logs are still kept, oldest first (retention).
CREATE INDEX idx_deployments_logs_kept ON deployments (finished_at)
    WHERE logs_pruned_at IS NULL AND state IN ('failed', 'canceled', 'superseded');

UPDATE deployments SET snapshot = snapshot - 'environment' - 'secrets'
    WHERE snapshot ? 'environment' OR snapshot ? 'secrets';

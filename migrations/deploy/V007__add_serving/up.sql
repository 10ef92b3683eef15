-- V007__add_serving
-- Description: deployments that serve. The project's host label (copied at
-- creation, so routes need no call to the project service), the address a
-- runner serves a live deployment on, the CRASHED state (a live app that
-- kept exiting), and at most one LIVE deployment per project and
-- environment, enforced here as well as by the state machine.
-- Rollback: down.sql drops the index and columns and restores the check.

ALTER TABLE deployments
    ADD COLUMN host_label VARCHAR(63) NOT NULL DEFAULT '',
    ADD COLUMN upstream VARCHAR(255) NOT NULL DEFAULT '';

ALTER TABLE deployments DROP CONSTRAINT deployments_state_check;
ALTER TABLE deployments ADD CONSTRAINT deployments_state_check
    CHECK (state IN ('queued', 'building', 'deploying', 'live', 'failed', 'canceled', 'superseded', 'crashed'));

-- Older duplicates (none should exist) give way to the newest.
UPDATE deployments d SET state = 'superseded', finished_at = coalesce(finished_at, now())
    WHERE state = 'live' AND EXISTS (
        SELECT 1 FROM deployments n
        WHERE n.project_id = d.project_id AND n.environment = d.environment
          AND n.state = 'live' AND (n.created_at, n.id) > (d.created_at, d.id)
    );

CREATE UNIQUE INDEX idx_deployments_one_live ON deployments (project_id, environment) WHERE state = 'live';
DROP INDEX idx_deployments_project_live;

DROP INDEX idx_deployments_logs_kept;
CREATE INDEX idx_deployments_logs_kept ON deployments (finished_at)
    WHERE logs_pruned_at IS NULL AND state IN ('failed', 'canceled', 'superseded', 'crashed');

-- V008__add_push_to_deploy
-- Description: push to deploy. The last commit seen on each auto-deploying
-- project's branch (the poller's compare-and-set, so replicas deploy a
-- push once), and the push-event deliveries already taken (a replayed
-- delivery starts nothing).
-- Rollback: down.sql drops the tables.

CREATE TABLE source_watches (
    project_id UUID PRIMARY KEY,
    last_sha VARCHAR(64) NOT NULL,
    checked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE push_deliveries (
    project_id UUID NOT NULL,
    delivery_id VARCHAR(128) NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, delivery_id)
);

-- Whether a commit was already deployed to a project's environment.
CREATE INDEX idx_deployments_project_commit ON deployments (project_id, commit_sha);

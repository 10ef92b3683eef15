-- V002__add_deployment_lifecycle
-- Description: what the lifecycle needs: the settings snapshot a deployment
-- runs, the runner's claim and lease, cancellation, outcome and timings.
-- Rollback: down.sql drops the columns and index.

ALTER TABLE deployments
    ADD COLUMN snapshot JSONB NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN rollback_of UUID REFERENCES deployments (id),
    ADD COLUMN status_message VARCHAR(1024) NOT NULL DEFAULT '',
    ADD COLUMN exit_code INTEGER,
    ADD COLUMN runner_id VARCHAR(128),
    ADD COLUMN lease_expires_at TIMESTAMPTZ,
    ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN started_at TIMESTAMPTZ,
    ADD COLUMN finished_at TIMESTAMPTZ;

-- Claims whose lease ran out go back to the queue.
CREATE INDEX idx_deployments_leases ON deployments (lease_expires_at)
    WHERE state IN ('building', 'deploying');
-- The live deployment of a project (superseding it).
CREATE INDEX idx_deployments_project_live ON deployments (project_id) WHERE state = 'live';

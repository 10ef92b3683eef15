-- V001__create_deployments_table
-- Description: deployments of projects and their lifecycle state.
-- Rollback: down.sql drops the table and its trigger function.

-- Keeps updated_at current on every UPDATE.
CREATE OR REPLACE FUNCTION update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TABLE deployments (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id UUID NOT NULL,
    creator_id UUID NOT NULL,
    state VARCHAR(20) NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'building', 'deploying', 'live', 'failed', 'canceled', 'superseded')),
    source_ref VARCHAR(255) NOT NULL DEFAULT '',
    environment VARCHAR(63) NOT NULL DEFAULT 'production',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A project's deployments, newest first.
CREATE INDEX idx_deployments_project_created ON deployments (project_id, created_at DESC, id DESC);
-- The runners' queue: the oldest queued deployment first.
CREATE INDEX idx_deployments_queued ON deployments (created_at) WHERE state = 'queued';

CREATE TRIGGER update_deployments_updated_at
    BEFORE UPDATE ON deployments
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

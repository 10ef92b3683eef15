DROP INDEX idx_deployments_logs_kept;
CREATE INDEX idx_deployments_logs_kept ON deployments (finished_at)
    WHERE logs_pruned_at IS NULL AND state IN ('failed', 'canceled', 'superseded');
CREATE INDEX idx_deployments_project_live ON deployments (project_id) WHERE state = 'live';
DROP INDEX idx_deployments_one_live;
UPDATE deployments SET state = 'failed' WHERE state = 'crashed';
ALTER TABLE deployments DROP CONSTRAINT deployments_state_check;
ALTER TABLE deployments ADD CONSTRAINT deployments_state_check
    CHECK (state IN ('queued', 'building', 'deploying', 'live', 'failed', 'canceled', 'superseded'));
ALTER TABLE deployments DROP COLUMN upstream, DROP COLUMN host_label;

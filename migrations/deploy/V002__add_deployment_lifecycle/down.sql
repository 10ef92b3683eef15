DROP INDEX idx_deployments_project_live;
DROP INDEX idx_deployments_leases;
ALTER TABLE deployments DROP COLUMN finished_at, DROP COLUMN started_at, DROP COLUMN cancel_requested, DROP COLUMN lease_expires_at, DROP COLUMN runner_id, DROP COLUMN exit_code, DROP COLUMN status_message, DROP COLUMN rollback_of, DROP COLUMN snapshot;

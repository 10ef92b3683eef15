DROP INDEX idx_deployments_logs_kept;
ALTER TABLE deployments DROP COLUMN logs_pruned_at;
DROP TABLE runners;

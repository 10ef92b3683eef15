-- V009__add_log_phase
-- Description: whether a log line came from the running app (after the
-- deployment went live) rather than from its build and start; only build
-- lines count against a deployment's line limit.
-- Rollback: down.sql drops the column.

ALTER TABLE deployment_logs ADD COLUMN runtime BOOLEAN NOT NULL DEFAULT false;

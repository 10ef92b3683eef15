-- V019__add_log_process
-- Description: which process a log line comes from: empty for the
-- deployment itself (build, release command, web process, the platform's
-- lines), a worker's name, or "run.<id>" for a one-off or cron run. A
-- constant default: no table rewrite, and the previous release, which
-- does not know the column, keeps working.
-- Rollback: down.sql drops the column (every line reads as the
-- deployment's own).

ALTER TABLE deployment_logs ADD COLUMN process VARCHAR(64) NOT NULL DEFAULT '';

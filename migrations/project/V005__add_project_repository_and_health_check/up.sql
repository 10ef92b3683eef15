-- V005__add_project_repository_and_health_check
-- Description: where a project's source comes from (a git repository URL,
-- deployed at `branch` or a given ref) and the path its running app answers
-- health checks on.
-- Rollback: down.sql drops the columns.

ALTER TABLE project_settings
    ADD COLUMN repository_url VARCHAR(2048) NOT NULL DEFAULT '',
    ADD COLUMN health_check_path VARCHAR(1024) NOT NULL DEFAULT '';

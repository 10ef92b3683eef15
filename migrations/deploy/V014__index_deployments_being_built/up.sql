-- V014__index_deployments_being_built
-- Description: the deployments of a project being built now, which a fair
-- claim counts against DEPLOY_MAX_BUILDS_PER_PROJECT. Built concurrently,
-- in a migration of its own (one CONCURRENTLY statement per migration). A
-- build that fails leaves an INVALID index behind: drop it with
-- DROP INDEX CONCURRENTLY idx_deployments_project_building; and apply again.
-- Rollback: down.sql drops the index.

CREATE INDEX CONCURRENTLY idx_deployments_project_building ON deployments (project_id)
    WHERE state IN ('building', 'deploying');

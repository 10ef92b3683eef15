-- V015__add_project_egress_and_resources
-- Description: whether a project's builds and its running app may reach
-- out through the egress proxy (on by default: installing dependencies
-- needs it, and most apps call other services), and each deployment's
-- share of a runner (memory in MiB, CPU in thousandths, processes; 0 takes
-- the runner's default). Constant defaults: no table rewrite, and the
-- previous release, which does not know the columns, keeps working.
-- Rollback: down.sql drops the columns (deployments then get egress and
-- the runners' defaults, as before).

ALTER TABLE project_settings
    ADD COLUMN build_egress BOOLEAN NOT NULL DEFAULT true,
    ADD COLUMN app_egress BOOLEAN NOT NULL DEFAULT true,
    ADD COLUMN memory_mb INTEGER NOT NULL DEFAULT 0 CHECK (memory_mb >= 0),
    ADD COLUMN cpu_millis INTEGER NOT NULL DEFAULT 0 CHECK (cpu_millis >= 0),
    ADD COLUMN processes INTEGER NOT NULL DEFAULT 0 CHECK (processes >= 0);

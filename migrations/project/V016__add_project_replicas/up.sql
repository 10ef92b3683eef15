-- V016__add_project_replicas
-- Description: how many copies of a project's live app run, spread over
-- the runners (0 takes one). A constant default: no table rewrite, and the
-- previous release, which does not know the column, keeps working.
-- Rollback: down.sql drops the column (every app runs one copy, as before).

ALTER TABLE project_settings
    ADD COLUMN replicas INTEGER NOT NULL DEFAULT 0 CHECK (replicas >= 0);

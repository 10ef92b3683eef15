-- V009__add_project_release_command
-- Description: a command run after a deployment's build and before its
-- start (the release phase: migrations, cache warming); empty for none.
-- A constant default: no table rewrite, and the previous release, which
-- does not know the column, keeps working.
-- Rollback: down.sql drops the column.

ALTER TABLE project_settings ADD COLUMN release_command VARCHAR(4096) NOT NULL DEFAULT '';

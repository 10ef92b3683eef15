-- V017__add_project_process_types
-- Description: a project's workers and cron entries, as a JSON array of
-- {name, command, schedule, time_zone} (the project service checks each
-- before it is stored). A constant default: no table rewrite, and the
-- previous release, which does not know the column, keeps working.
-- Rollback: down.sql drops the column (no workers, no cron entries).

ALTER TABLE project_settings
    ADD COLUMN process_types JSONB NOT NULL DEFAULT '[]'::jsonb
        CHECK (jsonb_typeof(process_types) = 'array');

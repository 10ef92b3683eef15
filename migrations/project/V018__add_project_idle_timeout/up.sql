-- V018__add_project_idle_timeout
-- Description: scale to zero — seconds without a request after which a
-- live app's web process is stopped until the next request (0: never). A
-- constant default: no table rewrite, and the previous release, which
-- does not know the column, keeps working.
-- Rollback: down.sql drops the column (apps are never stopped for
-- idleness).

ALTER TABLE project_settings
    ADD COLUMN idle_timeout_secs INTEGER NOT NULL DEFAULT 0
        CHECK (idle_timeout_secs BETWEEN 0 AND 86400);

-- V002__add_project_slug_and_soft_delete
-- Description: a slug unique per owner among live projects, and soft
-- deletion with a purge time.
-- Rollback: down.sql drops the columns and index.

ALTER TABLE projects
    ADD COLUMN slug VARCHAR(63) NOT NULL DEFAULT '',
    ADD COLUMN deleted_at TIMESTAMPTZ,
    ADD COLUMN purge_after TIMESTAMPTZ;

-- Slugs are unique per owner among projects that are not deleted.
CREATE UNIQUE INDEX idx_projects_owner_slug ON projects (owner_id, slug) WHERE deleted_at IS NULL;
-- The purge job: deleted projects whose retention has run out.
CREATE INDEX idx_projects_purge ON projects (purge_after) WHERE deleted_at IS NOT NULL;

DROP INDEX idx_projects_purge;
DROP INDEX idx_projects_owner_slug;
ALTER TABLE projects DROP COLUMN purge_after, DROP COLUMN deleted_at, DROP COLUMN slug;

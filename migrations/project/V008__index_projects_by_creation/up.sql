-- V008__index_projects_by_creation
-- Description: an admin's project list (every owner, newest first) seeks
-- to its page instead of sorting the whole table. Built concurrently:
-- writes to projects go on while it builds. A build that fails (a lock
-- timeout, a cancel) leaves an INVALID index behind: drop it with
-- DROP INDEX CONCURRENTLY idx_projects_created; and apply again.
-- Rollback: down.sql drops the index.

CREATE INDEX CONCURRENTLY idx_projects_created ON projects (created_at DESC, id DESC);

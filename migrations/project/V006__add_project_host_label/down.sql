DROP TRIGGER projects_assign_host_label ON projects;
DROP FUNCTION assign_project_host_label();
DROP INDEX idx_projects_host_label;
ALTER TABLE projects DROP COLUMN host_label;

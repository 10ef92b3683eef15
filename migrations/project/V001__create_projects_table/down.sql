DROP TABLE projects;
DROP FUNCTION update_updated_at_column();

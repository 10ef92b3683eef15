DROP INDEX idx_deployments_project_commit;
DROP TABLE push_deliveries;
DROP TABLE source_watches;

DROP INDEX CONCURRENTLY IF EXISTS idx_deployments_project_building;

DROP INDEX CONCURRENTLY IF EXISTS idx_deployments_owner_started;

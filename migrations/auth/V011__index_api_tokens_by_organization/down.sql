DROP INDEX CONCURRENTLY IF EXISTS idx_api_tokens_organization;

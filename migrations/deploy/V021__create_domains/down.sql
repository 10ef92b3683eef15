DELETE FROM webhook_deliveries WHERE deployment_id IS NULL;
ALTER TABLE webhook_deliveries ALTER COLUMN deployment_id SET NOT NULL;
DROP TABLE IF EXISTS acme_accounts;
DROP TABLE IF EXISTS acme_challenges;
DROP TABLE IF EXISTS domains;
DROP FUNCTION IF EXISTS notify_domain_change();

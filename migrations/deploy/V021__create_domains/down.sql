DROP TABLE IF EXISTS acme_accounts;
DROP TABLE IF EXISTS acme_challenges;
DROP TABLE IF EXISTS domains;
DROP FUNCTION IF EXISTS notify_domain_change();

DROP TABLE IF EXISTS deployment_egress;
DROP TABLE IF EXISTS build_caches;

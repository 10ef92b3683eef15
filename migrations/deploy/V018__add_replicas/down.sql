DROP TABLE IF EXISTS replicas;
DROP FUNCTION IF EXISTS notify_replica_change();

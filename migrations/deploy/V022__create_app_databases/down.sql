DROP TABLE previews;
DROP TABLE app_database_backups;
DROP TABLE app_databases;

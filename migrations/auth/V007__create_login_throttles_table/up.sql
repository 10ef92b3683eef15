-- V007__create_login_throttles_table
-- Description: failed sign-in counters per account and per client address,
-- kept in the database so they survive a restart and are shared by
-- replicas.
-- Rollback: down.sql drops the table.

CREATE TABLE login_throttles (
    scope VARCHAR(320) PRIMARY KEY,
    failures INTEGER NOT NULL DEFAULT 0,
    window_started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_until TIMESTAMPTZ
);

-- V017__add_egress_records_and_cache_generations
-- Description: each deployment's egress record, one row per phase (build
-- or app) and destination as the sandbox named it, counts added as its
-- runner reports them; and each project's build cache generation, raised
-- by ClearBuildCache, so that runners drop caches of an older one.
-- New tables only: the previous release never reads them.
-- Rollback: down.sql drops both tables.

CREATE TABLE deployment_egress (
    deployment_id UUID NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    phase VARCHAR(8) NOT NULL CHECK (phase IN ('build', 'app')),
    host VARCHAR(256) NOT NULL,
    port INTEGER NOT NULL CHECK (port BETWEEN 0 AND 65535),
    connections BIGINT NOT NULL DEFAULT 0,
    bytes_sent BIGINT NOT NULL DEFAULT 0,
    bytes_received BIGINT NOT NULL DEFAULT 0,
    refusals BIGINT NOT NULL DEFAULT 0,
    refusal_reason VARCHAR(512) NOT NULL DEFAULT '',
    failures BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment_id, phase, host, port)
);

CREATE TABLE build_caches (
    project_id UUID PRIMARY KEY,
    generation BIGINT NOT NULL CHECK (generation > 0),
    cleared_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

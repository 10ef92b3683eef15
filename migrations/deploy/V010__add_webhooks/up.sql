-- V010__add_webhooks
-- Description: outbound webhooks. A webhook subscribes a URL to deployment
-- events of one project or of every project of one organisation (a
-- deployment's owner_id is its project's organisation then). Each event
-- for each subscribed webhook is one delivery row, written in the same
-- transaction as the state change it reports (the outbox: nothing is
-- lost between the change and the sending), and every attempt at it is
-- logged with the receiver's status. The signing secret is kept to sign
-- with; it is never returned after creation.
-- Rollback: down.sql drops the tables.

CREATE TABLE webhooks (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id UUID,
    organization_id UUID,
    url VARCHAR(2048) NOT NULL,
    secret VARCHAR(64) NOT NULL,
    events TEXT[] NOT NULL CHECK (cardinality(events) BETWEEN 1 AND 6),
    created_by UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT webhooks_one_scope CHECK ((project_id IS NULL) <> (organization_id IS NULL))
);

CREATE INDEX idx_webhooks_project ON webhooks (project_id) WHERE project_id IS NOT NULL;
CREATE INDEX idx_webhooks_organization ON webhooks (organization_id) WHERE organization_id IS NOT NULL;

CREATE TABLE webhook_deliveries (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    webhook_id UUID NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event VARCHAR(32) NOT NULL,
    deployment_id UUID NOT NULL,
    payload JSONB NOT NULL,
    state VARCHAR(16) NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The sender's walk: due deliveries, soonest first.
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
-- A webhook's delivery log, newest first.
CREATE INDEX idx_webhook_deliveries_webhook ON webhook_deliveries (webhook_id, created_at DESC, id DESC);

CREATE TABLE webhook_attempts (
    delivery_id UUID NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    status_code INTEGER,
    error VARCHAR(500) NOT NULL DEFAULT '',
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

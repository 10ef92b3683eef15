-- V021__create_domains
-- Description: custom domains of projects' environments, the certificates
-- an ACME CA issued for them (the private key sealed like webhooks'
-- secrets), the challenges of open orders that gateways answer, and the
-- ACME account each directory knows the platform by. A name belongs to
-- one project at a time (a unique index). Any deploy service may work on
-- a domain's order; one at a time holds it (order_lease_until). A NOTIFY
-- on channel "domains" at every change wakes the gateways' route watches.
-- Webhooks learn of certificates issued and refused: a delivery is about
-- a deployment or, now, about no deployment (a domain).
-- Rollback: down.sql drops the three tables and the deliveries about no
-- deployment; the previous release routes no custom domain.

CREATE TABLE domains (
    id UUID PRIMARY KEY,
    project_id UUID NOT NULL,
    environment VARCHAR(64) NOT NULL,
    -- Lowercase, no trailing dot; "*.example.com" for a wildcard.
    name VARCHAR(253) NOT NULL,
    challenge VARCHAR(16) NOT NULL CHECK (challenge IN ('http-01', 'tls-alpn-01', 'dns-01')),
    status VARCHAR(16) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'issued', 'renewing', 'failed')),
    status_message VARCHAR(1024) NOT NULL DEFAULT '',
    redirect_https BOOLEAN NOT NULL DEFAULT true,
    hsts_max_age_secs INTEGER NOT NULL DEFAULT 0 CHECK (hsts_max_age_secs >= 0),
    certificate_pem TEXT,
    -- The certificate's private key, sealed (crate::crypto) with the key
    -- named by key_id.
    key_sealed TEXT,
    key_id VARCHAR(64),
    not_after TIMESTAMPTZ,
    -- When to order its successor: DEPLOY_ACME_RENEW_BEFORE_DAYS before
    -- expiry, or a third of its lifetime before, whichever is later.
    renew_at TIMESTAMPTZ,
    -- The last order: its authorizations are deactivated when the domain
    -- is removed, so no other project's order reuses them.
    order_url VARCHAR(2048),
    -- Orders tried since the last success, and when to try the next.
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    order_lease_until TIMESTAMPTZ,
    creator_id UUID,
    -- The project's organisation when it was added, whose webhooks hear
    -- of it.
    organization_id UUID,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT domains_certificate_whole CHECK (
        (certificate_pem IS NULL) = (key_sealed IS NULL)
        AND (certificate_pem IS NULL) = (not_after IS NULL)
        AND (certificate_pem IS NULL) = (renew_at IS NULL)
    )
);

CREATE UNIQUE INDEX domains_name_key ON domains (name);
CREATE INDEX domains_by_project ON domains (project_id, name);
CREATE INDEX domains_due ON domains (next_attempt_at);

CREATE TABLE acme_challenges (
    token VARCHAR(128) PRIMARY KEY,
    domain_id UUID NOT NULL REFERENCES domains (id) ON DELETE CASCADE,
    -- The name the CA validates (without "*.").
    name VARCHAR(253) NOT NULL,
    kind VARCHAR(16) NOT NULL CHECK (kind IN ('http-01', 'tls-alpn-01', 'dns-01')),
    key_authorization VARCHAR(256) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX acme_challenges_by_domain ON acme_challenges (domain_id);

CREATE TABLE acme_accounts (
    directory VARCHAR(2048) PRIMARY KEY,
    -- The account's credentials (JSON), sealed.
    credentials_sealed TEXT NOT NULL,
    key_id VARCHAR(64) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE webhook_deliveries ALTER COLUMN deployment_id DROP NOT NULL;

CREATE FUNCTION notify_domain_change() RETURNS trigger AS $$
BEGIN
    IF TG_TABLE_NAME = 'domains' THEN
        PERFORM pg_notify('domains', COALESCE(NEW.id, OLD.id)::text || ':' || COALESCE(NEW.status, 'removed'));
    ELSE
        PERFORM pg_notify('domains', COALESCE(NEW.domain_id, OLD.domain_id)::text || ':challenge');
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER domains_notify AFTER INSERT OR UPDATE OR DELETE ON domains
    FOR EACH ROW EXECUTE FUNCTION notify_domain_change();
CREATE TRIGGER acme_challenges_notify AFTER INSERT OR DELETE ON acme_challenges
    FOR EACH ROW EXECUTE FUNCTION notify_domain_change();

-- V010__create_organizations
-- Description: organisations own projects together; their members hold a
-- role each (viewer, developer, admin, owner), and invitations wait for
-- their invitee with a single-use token (only its SHA-256 is kept). A
-- project an organisation owns has owner_id = organization_id, so slugs
-- stay unique per owner and an owner's project list is the same index
-- walk for both; personal projects keep organization_id NULL. Users live
-- in the auth database: they are referred to by id only.
-- Rollback: down.sql drops the column and the tables.

CREATE TABLE organizations (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(100) NOT NULL,
    created_by UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TRIGGER update_organizations_updated_at
    BEFORE UPDATE ON organizations
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

CREATE TABLE organization_members (
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id UUID NOT NULL,
    role VARCHAR(16) NOT NULL CHECK (role IN ('viewer', 'developer', 'admin', 'owner')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, user_id)
);

-- A user's organisations.
CREATE INDEX idx_organization_members_user ON organization_members (user_id);

CREATE TRIGGER update_organization_members_updated_at
    BEFORE UPDATE ON organization_members
    FOR EACH ROW
    EXECUTE FUNCTION update_updated_at_column();

CREATE TABLE organization_invitations (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email VARCHAR(254) NOT NULL,
    role VARCHAR(16) NOT NULL CHECK (role IN ('viewer', 'developer', 'admin', 'owner')),
    token_hash BYTEA NOT NULL UNIQUE,
    invited_by UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    accepted_at TIMESTAMPTZ,
    accepted_by UUID
);

CREATE INDEX idx_organization_invitations_organization ON organization_invitations (organization_id);

ALTER TABLE projects ADD COLUMN organization_id UUID;

-- An organisation's project is owned by the organisation itself. Checked
-- for new rows now; the existing ones all have organization_id NULL.
ALTER TABLE projects ADD CONSTRAINT projects_organization_owns
    CHECK (organization_id IS NULL OR owner_id = organization_id) NOT VALID;

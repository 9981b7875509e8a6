-- Preview environments: each is an app of its own (`apps.source = 'preview'`,
-- named `<parent>-pr-<n>`), described here. A row lives while the preview
-- does; tearing it down (recorded in the saga `preview:<app>`) deletes it.
ALTER TABLE apps DROP CONSTRAINT IF EXISTS apps_source_check;
ALTER TABLE apps ADD CONSTRAINT apps_source_check
    CHECK (source IN ('api', 'apps_dir', 'preview'));

CREATE TABLE previews (
    app         TEXT PRIMARY KEY,
    parent      TEXT NOT NULL,
    number      BIGINT NOT NULL CHECK (number > 0),
    head_sha    TEXT NOT NULL,
    head_branch TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('active', 'tearing_down')),
    reason      TEXT,
    ttl_secs    BIGINT NOT NULL CHECK (ttl_secs > 0),
    opened_by   TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (parent, number)
);
CREATE INDEX previews_active ON previews (parent, updated_at DESC) WHERE status = 'active';

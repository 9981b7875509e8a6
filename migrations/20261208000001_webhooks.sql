-- Git forge webhooks. A per-app webhook secret is sealed like app secrets
-- (shared/src/crypto.rs) but kept apart from them: app secrets go into the
-- app's containers, the webhook secret never does.
CREATE TABLE app_webhook_secrets (
    app        TEXT PRIMARY KEY,
    sealed     TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    updated_by TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every delivery, one row per app it concerns (or one with no app when it
-- matched none). `change` is what the verified payload said (NULL when the
-- delivery was rejected: an unverified payload is never kept); a replay
-- decides again from it.
CREATE TABLE webhook_deliveries (
    id            TEXT PRIMARY KEY,
    provider      TEXT NOT NULL CHECK (provider IN ('github', 'gitea', 'gitlab')),
    delivery_id   TEXT NOT NULL CHECK (length(delivery_id) <= 200),
    event         TEXT NOT NULL CHECK (length(event) <= 64),
    app           TEXT,
    status        TEXT NOT NULL CHECK (status IN
                    ('received', 'ignored', 'rejected', 'deploying', 'replayed', 'tearing_down')),
    reason        TEXT CHECK (length(reason) <= 2000),
    change        JSONB,
    deployment_id TEXT,
    replay_of     TEXT,
    actor         TEXT NOT NULL,
    received_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- A redelivery (same forge delivery id) never deploys an app twice.
CREATE UNIQUE INDEX webhook_deliveries_deploy_once
    ON webhook_deliveries (provider, delivery_id, app) WHERE status = 'deploying';
CREATE INDEX webhook_deliveries_recent ON webhook_deliveries (received_at DESC);
CREATE INDEX webhook_deliveries_app ON webhook_deliveries (app, received_at DESC);

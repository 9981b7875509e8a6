-- Norn's own schema. Status columns carry CHECK constraints with the seed's
-- value lists so a bad write fails loudly instead of leaving an unknown state.

CREATE TABLE apps (
    id          TEXT PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]*$'),
    spec        JSONB NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('api', 'apps_dir')),
    source_dir  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE deployments (
    id              TEXT PRIMARY KEY,
    app             TEXT NOT NULL,
    ref             TEXT NOT NULL DEFAULT 'HEAD',
    commit_sha      TEXT,
    image_tag       TEXT,
    status          TEXT NOT NULL DEFAULT 'queued' CHECK (status IN
                      ('queued', 'building', 'testing', 'snapshotting', 'migrating',
                       'deploying', 'deployed', 'failed', 'rolled_back')),
    steps           JSONB NOT NULL DEFAULT '[]'::jsonb,
    error           TEXT,
    failed_step     TEXT,
    idempotency_key TEXT,
    triggered_by    TEXT NOT NULL DEFAULT 'api',
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ
);
CREATE INDEX idx_deployments_app ON deployments (app, started_at DESC);
CREATE INDEX idx_deployments_status ON deployments (status);
CREATE UNIQUE INDEX idx_deployments_idempotency ON deployments (app, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE forge_states (
    app         TEXT PRIMARY KEY,
    status      TEXT NOT NULL DEFAULT 'unforged' CHECK (status IN
                  ('unforged', 'forging', 'forged', 'forge_failed', 'tearing_down')),
    steps       JSONB NOT NULL DEFAULT '[]'::jsonb,
    resources   JSONB NOT NULL DEFAULT '{}'::jsonb,
    error       TEXT,
    started_at  TIMESTAMPTZ,
    finished_at TIMESTAMPTZ
);

CREATE TABLE health_checks (
    id          TEXT PRIMARY KEY,
    app         TEXT NOT NULL,
    healthy     BOOLEAN NOT NULL,
    response_ms INTEGER,
    checked_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX idx_health_checks_app_time ON health_checks (app, checked_at DESC);
CREATE INDEX idx_health_checks_time ON health_checks (checked_at);

CREATE TABLE cron_executions (
    id          BIGSERIAL PRIMARY KEY,
    app         TEXT NOT NULL,
    image_tag   TEXT,
    status      TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'timed_out')),
    exit_code   INT,
    output      TEXT,
    duration_ms BIGINT,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ
);
CREATE INDEX idx_cron_executions_app ON cron_executions (app, started_at DESC);

CREATE TABLE func_executions (
    id          BIGSERIAL PRIMARY KEY,
    app         TEXT NOT NULL,
    image_tag   TEXT,
    status      TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'timed_out')),
    exit_code   INT,
    output      TEXT,
    duration_ms BIGINT,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ
);
CREATE INDEX idx_func_executions_app ON func_executions (app, started_at DESC);

CREATE TABLE cron_states (
    app         TEXT PRIMARY KEY,
    schedule    TEXT NOT NULL,
    paused      BOOLEAN NOT NULL DEFAULT false,
    next_run_at TIMESTAMPTZ,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE cluster_nodes (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    provider    TEXT,
    region      TEXT,
    size        TEXT,
    role        TEXT NOT NULL,
    public_ip   TEXT,
    tailscale_ip TEXT,
    status      TEXT NOT NULL CHECK (status IN ('provisioning', 'ready', 'draining', 'removed')),
    provider_id TEXT,
    error       TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Append-only audit trail: every state transition of every operation.
CREATE TABLE saga_events (
    id          BIGSERIAL PRIMARY KEY,
    saga_id     TEXT NOT NULL,
    app         TEXT NOT NULL,
    category    TEXT NOT NULL,
    action      TEXT NOT NULL,
    step        TEXT,
    message     TEXT NOT NULL DEFAULT '',
    actor       TEXT NOT NULL,
    metadata    JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX idx_saga_events_saga ON saga_events (saga_id, id);
CREATE INDEX idx_saga_events_app ON saga_events (app, id);

CREATE FUNCTION saga_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'saga_events is append-only';
END $$;
CREATE TRIGGER saga_events_no_update BEFORE UPDATE OR DELETE ON saga_events
    FOR EACH ROW EXECUTE FUNCTION saga_events_append_only();

-- One mutating operation per app at a time, across all workers. The holder is a
-- per-process token (never a reusable name), and the lease expires unless its
-- holder's heartbeat extends it, so a dead worker never strands an app.
CREATE TABLE app_leases (
    app         TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    operation   TEXT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);

-- Where each app's processes are served: the ingress reads this.
CREATE TABLE app_routes (
    app           TEXT NOT NULL,
    process       TEXT NOT NULL,
    upstream      TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app, process)
);

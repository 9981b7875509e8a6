-- Fencing, crash-resume, cancel, supersede and rollback for deployments.

-- Every acquisition of an app lease gets a new, ever-increasing token. A
-- worker writes only while the lease still carries its token, so one that
-- lost the lease (paused, partitioned) cannot overwrite its successor.
CREATE SEQUENCE app_lease_tokens;
ALTER TABLE app_leases ADD COLUMN token BIGINT NOT NULL DEFAULT nextval('app_lease_tokens');

ALTER TABLE deployments
    -- How many times a worker took this deployment on (1 = never interrupted).
    ADD COLUMN attempts            INT NOT NULL DEFAULT 0,
    -- The lease token of the attempt currently (or last) running it.
    ADD COLUMN lease_token         BIGINT,
    ADD COLUMN cancel_requested_at TIMESTAMPTZ,
    ADD COLUMN cancel_requested_by TEXT,
    -- A rollback redeploys an earlier release's image: no build, no migration.
    ADD COLUMN kind                TEXT NOT NULL DEFAULT 'deploy' CHECK (kind IN ('deploy', 'rollback')),
    -- For a rollback: the deployment whose image it reuses.
    ADD COLUMN rollback_of         TEXT REFERENCES deployments (id);

CREATE INDEX idx_deployments_app_queued ON deployments (app, started_at) WHERE status = 'queued';

-- The fleet's own registry: every api, worker and scheduler process.
ALTER TABLE cluster_nodes
    ADD COLUMN host              TEXT,
    ADD COLUMN pid               INT,
    ADD COLUMN last_heartbeat_at TIMESTAMPTZ,
    ADD COLUMN running_jobs      INT NOT NULL DEFAULT 0;

-- A restore of an app database from one of its snapshots, run as a job
-- under the app lease.
CREATE TABLE snapshot_restores (
    id               TEXT PRIMARY KEY,
    app              TEXT NOT NULL,
    database_name    TEXT NOT NULL,
    snapshot         TEXT NOT NULL,
    pre_restore      BOOLEAN NOT NULL DEFAULT false,
    pre_restore_file TEXT,
    status           TEXT NOT NULL DEFAULT 'queued'
                       CHECK (status IN ('queued', 'running', 'completed', 'failed')),
    output           TEXT NOT NULL DEFAULT '',
    error            TEXT,
    requested_by     TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at      TIMESTAMPTZ
);
CREATE INDEX idx_snapshot_restores_app ON snapshot_restores (app, created_at DESC);

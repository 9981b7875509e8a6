-- The full output of deploy steps, in chunks, outside the deployment row
-- (which keeps a short tail per step). Capped per step by the writer
-- (NORN_STEP_LOG_MAX); removed with the deployment, and pruned by the
-- scheduler after NORN_LOG_RETENTION.
CREATE TABLE step_logs (
    id            BIGSERIAL PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    step          TEXT NOT NULL,
    attempt       INT NOT NULL,
    chunk         TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX step_logs_by_deployment ON step_logs (deployment_id, id);
CREATE INDEX step_logs_by_age ON step_logs (created_at);

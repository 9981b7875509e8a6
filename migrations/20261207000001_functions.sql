-- Functions: one row per invocation, from the moment the API accepts it.
-- `queued` rows wait for a slot (the function's `concurrency`); `dispatched`
-- says a job for it is in the function queue. The request body is kept only
-- until the run ends (`input` is cleared then).
ALTER TABLE func_executions DROP CONSTRAINT IF EXISTS func_executions_status_check;
ALTER TABLE func_executions ADD CONSTRAINT func_executions_status_check
    CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'timed_out', 'canceled'));
ALTER TABLE func_executions ALTER COLUMN started_at DROP NOT NULL;
ALTER TABLE func_executions ALTER COLUMN started_at DROP DEFAULT;
ALTER TABLE func_executions
    ADD COLUMN process          TEXT NOT NULL DEFAULT '',
    ADD COLUMN trigger          TEXT NOT NULL DEFAULT 'sync' CHECK (trigger IN ('sync', 'async')),
    ADD COLUMN invoked_by       TEXT NOT NULL DEFAULT 'api',
    ADD COLUMN request_method   TEXT NOT NULL DEFAULT 'POST',
    ADD COLUMN request_path     TEXT NOT NULL DEFAULT '/',
    ADD COLUMN request_query    TEXT NOT NULL DEFAULT '',
    ADD COLUMN content_type     TEXT,
    ADD COLUMN input            BYTEA,
    ADD COLUMN dispatched       BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN node             TEXT,
    ADD COLUMN container        TEXT,
    ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN reason           TEXT,
    ADD COLUMN output_truncated BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN timeout_ms       BIGINT NOT NULL DEFAULT 30000,
    ADD COLUMN deadline_at      TIMESTAMPTZ,
    ADD COLUMN queued_at        TIMESTAMPTZ NOT NULL DEFAULT now();
-- The slots of one function: what is waiting or running.
CREATE INDEX func_executions_active ON func_executions (app, process, queued_at, id)
    WHERE status IN ('queued', 'running');
CREATE INDEX func_executions_app_newest ON func_executions (app, id DESC);

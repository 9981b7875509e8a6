-- Cron apps: per-app state the scheduler reads, one row per tick it enqueued
-- (the exactly-once key), executions tied to their tick.

ALTER TABLE cron_states
    ADD COLUMN process           TEXT,
    ADD COLUMN timezone          TEXT,
    -- Set through the API; wins over the infraspec's `schedule` and survives redeploys.
    ADD COLUMN schedule_override TEXT,
    -- The image of the app's current deployment; a deploy sets it.
    ADD COLUMN image_tag         TEXT,
    -- The newest tick already handled; ticks after it are due.
    ADD COLUMN last_scheduled_at TIMESTAMPTZ;

CREATE TABLE cron_ticks (
    app             TEXT NOT NULL,
    process         TEXT NOT NULL,
    scheduled_at    TIMESTAMPTZ NOT NULL,
    trigger         TEXT NOT NULL CHECK (trigger IN ('schedule', 'catch_up', 'manual')),
    state           TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'started', 'skipped')),
    reason          TEXT,
    enqueued_at     TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    missed_reported BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (app, process, scheduled_at)
);
CREATE INDEX idx_cron_ticks_queued ON cron_ticks (scheduled_at) WHERE state = 'queued';

ALTER TABLE cron_executions
    ADD COLUMN process              TEXT,
    ADD COLUMN scheduled_at         TIMESTAMPTZ,
    ADD COLUMN trigger              TEXT,
    ADD COLUMN container            TEXT,
    ADD COLUMN worker               TEXT,
    ADD COLUMN deadline_at          TIMESTAMPTZ,
    ADD COLUMN container_started_at TIMESTAMPTZ,
    ADD COLUMN reason               TEXT;
-- A tick starts at most one execution, however often its job is delivered.
CREATE UNIQUE INDEX idx_cron_executions_tick ON cron_executions (app, process, scheduled_at);
CREATE INDEX idx_cron_executions_running ON cron_executions (deadline_at) WHERE status = 'running';

ALTER TABLE health_checks
    ADD COLUMN status_code INT,
    ADD COLUMN error       TEXT;

-- Change-runner operations on an app's database: each deploy's migrate step
-- (`migrations.dir`) and each run requested through the API (status, run,
-- dry run, revert, rewind), with what the runner reported and the merged
-- status of every change afterwards. `GET /api/apps/{id}/changes` reads the
-- newest status from here: the API holds no checkout of the app.
CREATE TABLE change_runs (
    id            TEXT PRIMARY KEY,
    app           TEXT NOT NULL,
    action        TEXT NOT NULL
                    CHECK (action IN ('deploy', 'status', 'run', 'dry_run', 'revert', 'rewind')),
    -- revert: the change; rewind: the changes it chose, once chosen.
    targets       JSONB,
    count         INT CHECK (count IS NULL OR count BETWEEN 1 AND 1000),
    force         BOOLEAN NOT NULL DEFAULT false,
    deployment_id TEXT,
    commit_sha    TEXT,
    status        TEXT NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    attempts      INT NOT NULL DEFAULT 0,
    changes       JSONB,
    runs          JSONB,
    error         TEXT,
    requested_by  TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ
);
CREATE INDEX idx_change_runs_app ON change_runs (app, created_at DESC);
CREATE INDEX idx_change_runs_status ON change_runs (app, finished_at DESC) WHERE changes IS NOT NULL;

-- The public hostnames apps declare (`endpoints`), one app per hostname,
-- claimed when a spec is registered: the ingress routes each to its app, and
-- a second app can never take another's traffic by declaring its hostname.
CREATE TABLE app_hostnames (
    hostname   TEXT PRIMARY KEY,
    app        TEXT NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX app_hostnames_app ON app_hostnames (app);

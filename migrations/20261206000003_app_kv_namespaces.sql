-- One app per key-value namespace, claimed when a spec is registered (like
-- app_databases): a second app can never get an ACL user on another app's keys.
CREATE TABLE app_kv_namespaces (
    namespace  TEXT PRIMARY KEY,
    app        TEXT NOT NULL UNIQUE,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Apps registered before this migration: the oldest claimant keeps the name.
INSERT INTO app_kv_namespaces (namespace, app)
SELECT DISTINCT ON (ns) ns, id
FROM (
    SELECT id, created_at, spec #>> '{services,kv,namespace}' AS ns FROM apps
) a
WHERE ns IS NOT NULL
ORDER BY ns, created_at
ON CONFLICT DO NOTHING;

-- Tenant isolation: one app per database, and the credentials Norn made for
-- each app's services, sealed (AES-256-GCM, see shared/src/crypto.rs).

-- Taken when a spec is registered, so a second app can never claim (and then
-- list, restore or prune the snapshots of) another app's database.
CREATE TABLE app_databases (
    database   TEXT PRIMARY KEY,
    app        TEXT NOT NULL UNIQUE,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Apps registered before this migration: the oldest claimant keeps the name.
INSERT INTO app_databases (database, app)
SELECT DISTINCT ON (db) db, id
FROM (
    SELECT id, created_at,
           COALESCE(spec #>> '{services,postgres,database}',
                    spec #>> '{infrastructure,postgres,database}') AS db
    FROM apps
) a
WHERE db IS NOT NULL
ORDER BY db, created_at
ON CONFLICT DO NOTHING;

CREATE TABLE service_credentials (
    app        TEXT NOT NULL,
    service    TEXT NOT NULL CHECK (service IN ('postgres', 'kv', 'events')),
    username   TEXT NOT NULL,
    -- base64(nonce || AES-256-GCM ciphertext); never the plaintext.
    sealed     TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app, service)
);

-- App secrets: values sealed with AES-256-GCM (shared/src/crypto.rs), never
-- stored in plaintext; each names the key that sealed it, so a key rotation
-- finds what the old key sealed.
CREATE TABLE app_secrets (
    app        TEXT NOT NULL,
    name       TEXT NOT NULL CHECK (name ~ '^[A-Z_][A-Z0-9_]*$' AND length(name) <= 255),
    sealed     TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (app, name)
);

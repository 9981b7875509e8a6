-- Workers report whether their container engine answers with every
-- heartbeat, so the API's health report needs no Docker socket of its own.
ALTER TABLE cluster_nodes ADD COLUMN engine_ok BOOLEAN;
ALTER TABLE cluster_nodes ADD COLUMN engine_error TEXT;

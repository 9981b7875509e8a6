-- A stored spec that no longer validates (a newer Norn tightened a rule) is
-- skipped by the scheduler and listed with its error; the first time it is
-- seen is recorded here, so the incident is visible without reading logs.
-- A successful registration clears it.
ALTER TABLE apps ADD COLUMN spec_error TEXT;
ALTER TABLE apps ADD COLUMN spec_error_at TIMESTAMPTZ;

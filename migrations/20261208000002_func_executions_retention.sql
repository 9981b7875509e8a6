-- Ended function runs are pruned after NORN_FUNCTION_RETENTION (each may hold
-- a MiB of output): the prune walks this index oldest first.
CREATE INDEX func_executions_ended ON func_executions (finished_at)
    WHERE finished_at IS NOT NULL;

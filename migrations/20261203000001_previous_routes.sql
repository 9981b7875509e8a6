-- The routes a deployment replaced when it switched traffic, written in the
-- switch's own transaction. A later attempt of that deployment (after a
-- crash) or its failure handling puts them back before removing the
-- deployment's instances, so a route never outlives the containers it names.
ALTER TABLE deployments ADD COLUMN previous_routes JSONB;

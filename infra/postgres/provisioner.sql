-- First start of the compose file's Postgres (docker-entrypoint-initdb.d):
-- the role Norn provisions app databases with (NORN_APP_DATABASE_URL):
-- CREATEDB and CREATEROLE, not a superuser. Its password is the server's
-- (NORN_DB_PASSWORD); start.sh accepts it only from norn-internal.
\getenv pw POSTGRES_PASSWORD
CREATE ROLE norn_provisioner LOGIN CREATEDB CREATEROLE PASSWORD :'pw';

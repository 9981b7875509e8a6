//! Key-value namespaces on Redis or Valkey (7.0 or later, for ACL channel
//! rules): one ACL user per app, limited to its own keys and channels, with
//! the commands that reach past them or into the server denied.

use redis::aio::MultiplexedConnection;

use super::{KvGrant, KvProvisioner, KvRevoke, ProvisionError};

/// The server at `NORN_KV_URL`, and the host app containers reach it at.
pub struct RedisKv {
    pub admin_url: String,
    pub container_host: String,
    pub port: u16,
}

/// The ACL user of the app whose namespace is `namespace`.
pub fn user_name(namespace: &str) -> String {
    format!("norn-kv-{namespace}")
}

/// What an app's user may run, after its key and channel patterns. Every
/// category but the dangerous and admin ones (FLUSHALL, CONFIG, KEYS, ACL,
/// CLIENT, MONITOR, DEBUG, SHUTDOWN, …); scripts run (their calls are
/// checked against the same rules) but functions, which are global, do
/// not; and the commands that list or reach keys outside any pattern
/// (SCAN, RANDOMKEY, SELECT, SWAPDB, PUBSUB) are denied.
const COMMAND_RULES: &[&str] = &[
    "+@all",
    "-@dangerous",
    "-@admin",
    "-@scripting",
    "+eval",
    "+evalsha",
    "+eval_ro",
    "+evalsha_ro",
    "+script|load",
    "+script|exists",
    "-scan",
    "-randomkey",
    "-select",
    "-swapdb",
    "-pubsub",
];

fn failed(what: &str) -> impl Fn(redis::RedisError) -> ProvisionError + '_ {
    move |e| ProvisionError::Failed(format!("{what}: {e}"))
}

impl RedisKv {
    async fn admin(&self) -> Result<MultiplexedConnection, ProvisionError> {
        norn_shared::kv::connect(&self.admin_url)
            .await
            .map_err(|e| ProvisionError::Failed(format!("connecting to the key-value server: {e}")))
    }
}

#[async_trait::async_trait]
impl KvProvisioner for RedisKv {
    async fn namespace(&self, grant: &KvGrant<'_>) -> Result<String, ProvisionError> {
        let mut conn = self.admin().await?;
        let existed: Option<redis::Value> = redis::cmd("ACL")
            .arg("GETUSER")
            .arg(grant.user)
            .query_async(&mut conn)
            .await
            .map_err(failed("reading the app's user"))?;
        // `reset` first: whatever the user held before, it ends with exactly
        // these rules (a hand-widened user is narrowed back).
        let mut setuser = redis::cmd("ACL");
        setuser
            .arg("SETUSER")
            .arg(grant.user)
            .arg("reset")
            .arg("on")
            .arg(format!(">{}", grant.password))
            .arg(format!("~{}:*", grant.namespace))
            .arg(format!("&{}:*", grant.namespace));
        for rule in COMMAND_RULES {
            setuser.arg(*rule);
        }
        let () = setuser
            .query_async(&mut conn)
            .await
            .map_err(failed("creating the app's user"))?;
        tracing::info!(app = grant.app, user = grant.user, "key-value user ready");
        Ok(format!(
            "user {} {} on keys and channels {}:*{}",
            grant.user,
            if existed.is_some() {
                "reset"
            } else {
                "created"
            },
            grant.namespace,
            persist(&mut conn).await?
        ))
    }

    async fn revoke_namespace(&self, revoke: &KvRevoke<'_>) -> Result<String, ProvisionError> {
        let mut conn = self.admin().await?;
        let deleted: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(revoke.user)
            .query_async(&mut conn)
            .await
            .map_err(failed("deleting the app's user"))?;
        // Connections already authenticated as the user outlive DELUSER.
        let _: Result<i64, _> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(revoke.user)
            .query_async(&mut conn)
            .await;
        let mut output = if deleted > 0 {
            format!("user {} deleted", revoke.user)
        } else {
            format!("user {} was already gone", revoke.user)
        };
        if revoke.drop_data {
            let removed = delete_keys(&mut conn, revoke.namespace).await?;
            output.push_str(&format!(
                "; {removed} keys under {}:* deleted",
                revoke.namespace
            ));
        } else {
            output.push_str(&format!("; keys under {}:* kept", revoke.namespace));
        }
        output.push_str(persist(&mut conn).await?);
        tracing::info!(
            app = revoke.app,
            user = revoke.user,
            "key-value user revoked"
        );
        Ok(output)
    }

    fn container_url(&self, user: &str, password: &str) -> String {
        format!(
            "redis://{user}:{password}@{}:{}",
            self.container_host, self.port
        )
    }
}

/// Writes the users to the server's ACL file, so they survive its restart.
/// A server without one keeps them in memory only: said in the step output.
async fn persist(conn: &mut MultiplexedConnection) -> Result<&'static str, ProvisionError> {
    let saved: Result<(), redis::RedisError> =
        redis::cmd("ACL").arg("SAVE").query_async(conn).await;
    match saved {
        Ok(()) => Ok(""),
        Err(e) if e.to_string().contains("ACL file") => Ok(
            " (the server has no aclfile: users last until it restarts; a forge makes them again)",
        ),
        Err(e) => Err(ProvisionError::Failed(format!("saving the ACL file: {e}"))),
    }
}

/// Deletes every key of `namespace`, a batch per SCAN page (never KEYS,
/// which blocks the server on a large keyspace).
async fn delete_keys(
    conn: &mut MultiplexedConnection,
    namespace: &str,
) -> Result<u64, ProvisionError> {
    let pattern = format!("{namespace}:*");
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(failed("listing the namespace's keys"))?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(conn)
                .await
                .map_err(failed("deleting the namespace's keys"))?;
            removed += n;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

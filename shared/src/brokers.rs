//! The Kafka-protocol brokers at `NORN_EVENTS_BROKERS` (Kafka, Redpanda,
//! Tansu, …): what the API's health report and the worker's topic
//! provisioner both need of them, through `rskafka` (pure Rust, no
//! librdkafka to build or install).

use std::time::Duration;

use rskafka::client::{Client, ClientBuilder};

/// How long a broker call may take before it counts as down.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many bootstrap brokers may be listed.
pub const MAX_BROKERS: usize = 16;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BrokerError(pub String);

impl From<rskafka::client::error::Error> for BrokerError {
    fn from(e: rskafka::client::error::Error) -> Self {
        use rskafka::client::error::Error;
        // The crate's own rendering carries the whole request and response.
        Self(match e {
            Error::ServerError {
                protocol_error,
                error_message,
                ..
            } => match error_message {
                Some(m) if !m.is_empty() => format!("{protocol_error}: {m}"),
                _ => protocol_error.to_string(),
            },
            other => other.to_string(),
        })
    }
}

/// The broker list of `NORN_EVENTS_BROKERS`: comma-separated `host:port`.
pub fn parse_list(raw: &str) -> Result<Vec<String>, String> {
    let brokers: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .map(str::to_owned)
        .collect();
    if brokers.is_empty() {
        return Err("lists no broker (expected host:port[,host:port…])".into());
    }
    if brokers.len() > MAX_BROKERS {
        return Err(format!("at most {MAX_BROKERS} brokers"));
    }
    for b in &brokers {
        address(b)?;
    }
    Ok(brokers)
}

/// Host and port of one `host:port` broker address.
pub fn address(broker: &str) -> Result<(String, u16), String> {
    let (host, port) = broker
        .rsplit_once(':')
        .ok_or_else(|| format!("{broker:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{broker:?} has no valid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.len() > 253 {
        return Err(format!("{broker:?} has no valid host"));
    }
    Ok((host.to_owned(), port))
}

/// A client of the cluster, within [`TIMEOUT`]; every later call gives up
/// retrying at [`TIMEOUT`] too, instead of rskafka's default of never.
pub async fn connect(brokers: &[String]) -> Result<Client, BrokerError> {
    let backoff = rskafka::BackoffConfig {
        deadline: Some(TIMEOUT),
        max_backoff: Duration::from_secs(1),
        ..Default::default()
    };
    let build = ClientBuilder::new(brokers.to_vec())
        .client_id("norn")
        .backoff_config(backoff)
        .build();
    within(build).await
}

/// How long the health report waits for the brokers.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Up (`Ok`) or down with the reason: the cluster answers a metadata
/// request within [`PING_TIMEOUT`] (a health report must not hang on it).
pub async fn ping(brokers: &[String]) -> Result<(), BrokerError> {
    let check = async {
        let client = connect(brokers).await?;
        within(client.list_topics()).await.map(drop)
    };
    tokio::time::timeout(PING_TIMEOUT, check)
        .await
        .unwrap_or_else(|_| {
            Err(BrokerError(format!(
                "the brokers did not answer within {} s",
                PING_TIMEOUT.as_secs()
            )))
        })
}

/// The topics the cluster has.
pub async fn topics(client: &Client) -> Result<Vec<String>, BrokerError> {
    let topics = within(client.list_topics()).await?;
    Ok(topics.into_iter().map(|t| t.name).collect())
}

/// `call` within [`TIMEOUT`].
pub async fn within<T>(
    call: impl Future<Output = Result<T, rskafka::client::error::Error>>,
) -> Result<T, BrokerError> {
    match tokio::time::timeout(TIMEOUT, call).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(BrokerError(format!(
            "the brokers did not answer within {} s",
            TIMEOUT.as_secs()
        ))),
    }
}

/// The broker topic of an app's declared `topic`: under the app's prefix
/// `<app>.`. App names hold no dot, so no app's prefix is another's.
pub fn topic_name(app: &str, topic: &str) -> String {
    format!("{app}.{topic}")
}

/// A Kafka-protocol broker of Norn's own for the tests: Tansu
/// (<https://tansu.io>) with in-memory storage, one process. The binary is
/// `NORN_TEST_TANSU` or `tansu` on the `PATH` (`.ci/run` fetches it).
pub struct LocalBroker {
    child: std::process::Child,
    port: u16,
}

impl LocalBroker {
    /// Starts it on every address at `port`, advertising `advertised_host`
    /// (an address both this host and app containers reach), and waits
    /// until it answers.
    pub async fn start(port: u16, advertised_host: &str) -> Result<Self, BrokerError> {
        let binary = std::env::var("NORN_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
        let child = std::process::Command::new(&binary)
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://0.0.0.0:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{advertised_host}:{port}"))
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| BrokerError(format!("starting {binary}: {e}")))?;
        let mut broker = Self { child, port };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match ping(&[broker.bootstrap()]).await {
                Ok(()) => return Ok(broker),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    broker.stop();
                    return Err(BrokerError(format!(
                        "{binary} did not come up on port {port}: {e}"
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The bootstrap address on this host (`NORN_EVENTS_BROKERS`).
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_list_is_host_port_pairs() {
        assert_eq!(
            parse_list(" a:9092, 10.0.0.2:19092 ,").unwrap(),
            vec!["a:9092".to_string(), "10.0.0.2:19092".to_string()]
        );
        for bad in ["", " , ", "a", "a:b", ":9092", "a:70000"] {
            assert!(parse_list(bad).is_err(), "{bad:?} was accepted");
        }
        let many = vec!["a:1"; MAX_BROKERS + 1].join(",");
        assert!(parse_list(&many).is_err());
    }

    #[test]
    fn topics_live_under_the_app_prefix() {
        assert_eq!(topic_name("mail", "inbound"), "mail.inbound");
    }
}

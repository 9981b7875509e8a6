//! App topics on the Kafka-protocol brokers at `NORN_EVENTS_BROKERS`,
//! through the admin protocol (CreateTopics, DeleteTopics) at the
//! cluster's controller.

use rskafka::client::error::{Error, ProtocolError};

use super::{ProvisionError, TopicProvisioner};
use norn_shared::brokers::{self, BrokerError};

/// How long the controller may take over one topic, in the request itself.
const REQUEST_TIMEOUT_MS: i32 = 5_000;

pub struct KafkaTopics {
    pub brokers: Vec<String>,
    /// The same brokers as app containers reach them.
    pub container_brokers: Vec<String>,
    pub partitions: i32,
    /// -1: the cluster's default (CreateTopics v4 and later).
    pub replication: i16,
}

fn failed(what: &str) -> impl Fn(BrokerError) -> ProvisionError + '_ {
    move |e| ProvisionError::Failed(format!("{what}: {e}"))
}

/// Whether `e` is the broker saying `code`.
fn is(e: &Error, code: ProtocolError) -> bool {
    matches!(e, Error::ServerError { protocol_error, .. } if *protocol_error == code)
}

impl KafkaTopics {
    async fn controller(
        &self,
    ) -> Result<rskafka::client::controller::ControllerClient, ProvisionError> {
        let client = brokers::connect(&self.brokers)
            .await
            .map_err(failed("connecting to the brokers"))?;
        client
            .controller_client()
            .map_err(|e| failed("reaching the controller")(e.into()))
    }
}

/// One admin call within the deadline: `Ok(true)` when it did its work,
/// `Ok(false)` when the broker answered `already` (the state asked for is
/// there).
async fn settle(
    what: &str,
    already: ProtocolError,
    call: impl Future<Output = Result<(), Error>>,
) -> Result<bool, ProvisionError> {
    match tokio::time::timeout(brokers::TIMEOUT, call).await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) if is(&e, already) => Ok(false),
        Ok(Err(e)) => Err(failed(what)(e.into())),
        Err(_) => Err(ProvisionError::Failed(format!(
            "{what}: no answer within {} s",
            brokers::TIMEOUT.as_secs()
        ))),
    }
}

#[async_trait::async_trait]
impl TopicProvisioner for KafkaTopics {
    async fn topics(&self, topics: &[String]) -> Result<String, ProvisionError> {
        let controller = self.controller().await?;
        let mut out = Vec::with_capacity(topics.len() + 1);
        for topic in topics {
            let create = controller.create_topic(
                topic.as_str(),
                self.partitions,
                self.replication,
                REQUEST_TIMEOUT_MS,
            );
            let what = format!("creating topic {topic}");
            out.push(
                if settle(&what, ProtocolError::TopicAlreadyExists, create).await? {
                    format!("created topic {topic}")
                } else {
                    format!("topic {topic} exists already: kept as it is")
                },
            );
        }
        out.push(
            "no broker ACLs: Norn gives apps no broker principal of their own, so topics are \
             kept apart by name only"
                .into(),
        );
        Ok(out.join("\n"))
    }

    async fn delete_topics(&self, topics: &[String]) -> Result<String, ProvisionError> {
        let controller = self.controller().await?;
        let mut out = Vec::with_capacity(topics.len());
        for topic in topics {
            let delete = controller.delete_topic(topic.as_str(), REQUEST_TIMEOUT_MS);
            let what = format!("deleting topic {topic}");
            out.push(
                if settle(&what, ProtocolError::UnknownTopicOrPartition, delete).await? {
                    format!("deleted topic {topic}")
                } else {
                    format!("topic {topic} was gone already")
                },
            );
        }
        Ok(out.join("\n"))
    }

    fn container_brokers(&self) -> String {
        self.container_brokers.join(",")
    }
}

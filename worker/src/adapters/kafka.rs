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
            match tokio::time::timeout(brokers::TIMEOUT, create).await {
                Ok(Ok(())) => out.push(format!("created topic {topic}")),
                Ok(Err(e)) if is(&e, ProtocolError::TopicAlreadyExists) => {
                    out.push(format!("topic {topic} exists already: kept as it is"));
                }
                Ok(Err(e)) => return Err(failed(&format!("creating topic {topic}"))(e.into())),
                Err(_) => {
                    return Err(ProvisionError::Failed(format!(
                        "creating topic {topic}: no answer within {} s",
                        brokers::TIMEOUT.as_secs()
                    )));
                }
            }
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
            match tokio::time::timeout(brokers::TIMEOUT, delete).await {
                Ok(Ok(())) => out.push(format!("deleted topic {topic}")),
                Ok(Err(e)) if is(&e, ProtocolError::UnknownTopicOrPartition) => {
                    out.push(format!("topic {topic} was gone already"));
                }
                Ok(Err(e)) => return Err(failed(&format!("deleting topic {topic}"))(e.into())),
                Err(_) => {
                    return Err(ProvisionError::Failed(format!(
                        "deleting topic {topic}: no answer within {} s",
                        brokers::TIMEOUT.as_secs()
                    )));
                }
            }
        }
        Ok(out.join("\n"))
    }

    fn container_brokers(&self) -> String {
        self.container_brokers.join(",")
    }
}

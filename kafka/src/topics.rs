//! Topics: whether one exists (and with how many partitions), and creating the missing ones.
//! Which topics a service needs, with which settings, and what it does when one is missing stay
//! with the service.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::{Client, ClientContext};

use crate::broker_log::BrokerLog;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Why topics could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// librdkafka refused the admin client (bad settings).
    #[error("creating an admin client: {0}")]
    Client(#[source] KafkaError),
    /// No runtime to drive the admin client's future.
    #[error("no runtime for the admin client: {0}")]
    Runtime(#[source] std::io::Error),
    /// The CreateTopics request failed as a whole (broker away, timeout).
    #[error("the CreateTopics request: {0}")]
    Request(#[source] KafkaError),
    /// The broker refused one topic (`created`: the topics answered before it, which exist).
    #[error("creating topic {topic}: {code}")]
    Refused {
        topic: String,
        code: RDKafkaErrorCode,
        created: Vec<String>,
    },
}

/// The partition count of `topic`, `None` when it does not exist (or has no partitions, or
/// the broker reports an error for it). One metadata request, bounded by `timeout`.
pub fn partition_count<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

/// Admin options with both the request and the operation bounded by `timeout`.
pub fn admin_options(timeout: Duration) -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout))
}

/// Creates `topics` with an admin client of `config`, on a current-thread runtime of its own
/// (callers are plain threads). A topic that already exists is fine (another instance, or an
/// earlier attempt, made it). Returns the names of the topics this call created.
pub fn create_topics<'a>(
    config: &ClientConfig,
    topics: impl IntoIterator<Item = &'a NewTopic<'a>>,
    options: &AdminOptions,
) -> Result<Vec<String>, TopicError> {
    let admin: AdminClient<BrokerLog> =
        crate::broker_log::create(config).map_err(TopicError::Client)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(TopicError::Runtime)?;
    let results = runtime
        .block_on(admin.create_topics(topics, options))
        .map_err(TopicError::Request)?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(TopicError::Refused {
                    topic,
                    code,
                    created,
                })
            }
        }
    }
    Ok(created)
}

//! The demo's own Kafka clients: topic creation, and tails that read a topic from its start with
//! `isolation.level = read_committed`, so they count exactly what a downstream application would
//! see (aborted transactions never show). A tail rides out a broker outage by itself.

use std::time::Duration;

use anyhow::{Context, Result};
use edge_kafka::TopicError;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = edge_kafka::client_config(bootstrap);
    c.set("socket.timeout.ms", "10000");
    c
}

/// Creates `topics` (existing ones are fine) with `partitions` partitions, replication 1.
pub fn create_topics(bootstrap: &str, topics: &[&str], partitions: i32) -> Result<()> {
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    match edge_kafka::create_topics(&config(bootstrap), &new, &options) {
        Ok(_) => Ok(()),
        Err(TopicError::Client(e)) => Err(e).context("creating a Kafka admin client"),
        Err(TopicError::Runtime(e)) => Err(e.into()),
        Err(TopicError::Request(e)) => Err(e)
            .with_context(|| format!("Kafka at {bootstrap} did not answer a CreateTopics request")),
        Err(TopicError::Refused { topic, code, .. }) => {
            anyhow::bail!("creating topic {topic} at {bootstrap}: {code}")
        }
    }
}

/// Reads one topic from its beginning, committed records only.
pub struct Tail {
    consumer: BaseConsumer,
}

impl Tail {
    /// Assigns partitions `0..partitions` of `topic` from their beginning: no consumer group, so
    /// a broker restart costs no rebalance.
    pub fn new(bootstrap: &str, topic: &str, partitions: i32, group: &str) -> Result<Tail> {
        let consumer: BaseConsumer = config(bootstrap)
            .set("group.id", group)
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .context("creating a Kafka consumer")?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        consumer
            .assign(&assignment)
            .with_context(|| format!("assigning {topic}"))?;
        Ok(Tail { consumer })
    }

    /// Hands every record available now to `f` (key, value); returns how many.
    pub fn drain(&self, mut f: impl FnMut(&[u8], &[u8])) -> usize {
        let mut n = 0;
        let mut wait = Duration::from_millis(50);
        while let Some(result) = self.consumer.poll(wait) {
            wait = Duration::ZERO;
            if let Ok(message) = result {
                f(
                    message.key().unwrap_or(&[]),
                    message.payload().unwrap_or(&[]),
                );
                n += 1;
            }
            if n >= 100_000 {
                break;
            }
        }
        n
    }
}

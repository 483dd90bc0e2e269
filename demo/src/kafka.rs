//! The demo's own Kafka clients: topic creation, and tails that read a topic from its start with
//! `isolation.level = read_committed`, so they count exactly what a downstream application would
//! see (aborted transactions never show). A tail rides out a broker outage by itself.

use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

fn config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.max.ms", "1000");
    c
}

/// Creates `topics` (existing ones are fine) with `partitions` partitions, replication 1.
pub fn create_topics(bootstrap: &str, topics: &[&str], partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config(bootstrap)
        .create()
        .context("creating a Kafka admin client")?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime
        .block_on(admin.create_topics(&new, &options))
        .with_context(|| format!("Kafka at {bootstrap} did not answer a CreateTopics request"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic} at {bootstrap}: {code}"),
        }
    }
    Ok(())
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

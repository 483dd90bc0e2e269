//! Kafka helpers for the suites: create topics, read what `read_committed` readers see, count
//! with kcat. Every call is bounded in time: a broker that is down or goes away mid-test makes the
//! call fail within its timeout with a message naming the broker, never hang.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_kafka::{admin_options, create_topics, owned_headers, TopicError};
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// What a Kafka helper could not do, and against which broker.
#[derive(Debug, thiserror::Error)]
pub enum KafkaTestError {
    /// The broker did not answer in time: it is down, or went away during the test.
    #[error("Kafka at {bootstrap} did not answer within {timeout:?} while {during} (is it running? `tests/services/services.sh status`): {source}")]
    Unreachable {
        bootstrap: String,
        during: &'static str,
        timeout: Duration,
        source: Box<KafkaError>,
    },
    /// The broker answered with an error.
    #[error("Kafka at {bootstrap} refused {during}: {source}")]
    Broker {
        bootstrap: String,
        during: &'static str,
        source: Box<KafkaError>,
    },
    /// Reading did not reach the end of the topic before the deadline.
    #[error("reading {topic} from Kafka at {bootstrap} did not reach the end within {timeout:?} ({read} records so far)")]
    ReadTimeout {
        bootstrap: String,
        topic: String,
        timeout: Duration,
        read: usize,
    },
    /// kcat is not installed.
    #[error("kcat could not be run: {0} (install it: apt-get install kcat)")]
    KcatMissing(std::io::Error),
    /// kcat ran and failed.
    #[error("kcat against Kafka at {bootstrap} failed: {stderr}")]
    Kcat { bootstrap: String, stderr: String },
}

/// One record as a `read_committed` reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// A topic name no other test (or earlier run against the same broker) uses.
pub fn unique_topic(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Client settings every helper shares: the services' base ([`edge_kafka::client_config`]),
/// and fail fast instead of retrying for minutes.
pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut config = edge_kafka::client_config(bootstrap);
    config
        .set("socket.timeout.ms", "5000")
        .set("log_level", "3");
    config
}

/// Creates `topic` with `partitions` partitions (replication: as many brokers as the bootstrap
/// list names, at most 3).
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<(), KafkaTestError> {
    let timeout = Duration::from_secs(15);
    let during = "creating a topic";
    let replication = bootstrap.split(',').count().min(3) as i32;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let config = base_config(bootstrap);
    create_topics(&config, [&new], &admin_options(timeout)).map_err(|e| match e {
        TopicError::Client(source) => broker(bootstrap, during, source),
        TopicError::Runtime(e) => panic!("a current-thread runtime builds: {e}"),
        TopicError::Request(source) => unreachable(bootstrap, during, timeout, source),
        TopicError::Refused { code, .. } => {
            classify(bootstrap, during, timeout, KafkaError::AdminOp(code))
        }
    })?;
    Ok(())
}

/// Reads every record of `topic` that a `read_committed` reader sees, from the beginning of
/// every partition to its end (the last stable offset), within `timeout`.
pub fn read_committed(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<Record>, KafkaTestError> {
    let during = "reading committed records";
    let consumer: BaseConsumer = base_config(bootstrap)
        .set("group.id", unique_topic("edge-tests-reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|source| broker(bootstrap, during, source))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| unreachable(bootstrap, during, timeout, source))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut assignment = TopicPartitionList::new();
    for &p in &partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .map_err(|source| broker(bootstrap, during, source))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|source| broker(bootstrap, during, source))?;

    let deadline = Instant::now() + timeout;
    let mut at_end = std::collections::HashSet::new();
    let mut records = Vec::new();
    while at_end.len() < partitions.len() {
        if Instant::now() >= deadline {
            return Err(KafkaTestError::ReadTimeout {
                bootstrap: bootstrap.to_owned(),
                topic: topic.to_owned(),
                timeout,
                read: records.len(),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(source)) => return Err(classify(bootstrap, during, timeout, source)),
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                let headers = owned_headers(&m);
                records.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
    }
    Ok(records)
}

/// Counts the records of `topic` that kcat sees with `isolation.level=read_committed`: a second,
/// independent reader (librdkafka's C client through its own CLI).
pub fn kcat_count_committed(bootstrap: &str, topic: &str) -> Result<usize, KafkaTestError> {
    let output = Command::new("kcat")
        .args([
            "-C", "-b", bootstrap, "-t", topic, "-e", "-q", "-f", "%o\\n",
        ])
        .args(["-X", "isolation.level=read_committed", "-m", "15"])
        .output()
        .map_err(KafkaTestError::KcatMissing)?;
    if !output.status.success() {
        return Err(KafkaTestError::Kcat {
            bootstrap: bootstrap.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).lines().count())
}

fn broker(bootstrap: &str, during: &'static str, source: KafkaError) -> KafkaTestError {
    KafkaTestError::Broker {
        bootstrap: bootstrap.to_owned(),
        during,
        source: Box::new(source),
    }
}

fn unreachable(
    bootstrap: &str,
    during: &'static str,
    timeout: Duration,
    source: KafkaError,
) -> KafkaTestError {
    KafkaTestError::Unreachable {
        bootstrap: bootstrap.to_owned(),
        during,
        timeout,
        source: Box::new(source),
    }
}

/// Sorts an error into "did not answer" (timeouts, transport) and "answered with an error".
pub fn classify(
    bootstrap: &str,
    during: &'static str,
    timeout: Duration,
    source: KafkaError,
) -> KafkaTestError {
    let code = source.rdkafka_error_code();
    let unreachable_codes = [
        RDKafkaErrorCode::OperationTimedOut,
        RDKafkaErrorCode::RequestTimedOut,
        RDKafkaErrorCode::AllBrokersDown,
        RDKafkaErrorCode::BrokerTransportFailure,
        RDKafkaErrorCode::BrokerNotAvailable,
        RDKafkaErrorCode::MessageTimedOut,
        RDKafkaErrorCode::TimedOutQueue,
    ];
    if code.is_some_and(|c| unreachable_codes.contains(&c)) {
        unreachable(bootstrap, during, timeout, source)
    } else {
        broker(bootstrap, during, source)
    }
}

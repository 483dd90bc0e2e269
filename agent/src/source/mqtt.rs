//! The MQTT source: one broker connection (rumqttc), persistent session, manual acks, MQTT
//! 3.1.1 or MQTT 5 (`version`; the two clients behind one interface in [`session`]).
//!
//! Two tasks per source:
//!
//! - the **poller** owns the `EventLoop` and polls it without pause, whatever happens
//!   downstream, so keepalive pings never lapse. Each incoming publish is parsed and mapped
//!   into a [`Submission`] (readings plus dead letters) whose ack, when run by the ingest
//!   writer after its commit, hands the publish to
//! - the **acker**, which owns the `AsyncClient` side and awaits `ack()` (and `subscribe`,
//!   and the final `disconnect`), one request at a time, in the order it was asked.
//!   Awaiting `ack()` on the polling task deadlocks under a flood, so it never does
//!   (`docs/DESIGN.md` section 9, "Facts we rely on": "rumqttc, never await `ack()` on the
//!   polling task").
//!
//! # Invariants and crash reasoning
//!
//! - A QoS 1/2 publish is acknowledged (PUBACK) only from its submission's ack, which the
//!   writer runs after the commit that made its readings (or its dead letter) durable. If the
//!   agent dies first, the broker still holds the message for our persistent session
//!   (`clean_session = false`, same client id; MQTT 5: `clean_start = false` and a session
//!   expiry interval) and redelivers it; the dedupe index drops the copy if the commit had
//!   happened.
//! - **A stop does not end the session with an ack owed** ([`stop`]). When cancelled (SIGTERM
//!   drain, SIGHUP reload) the poller submits nothing more, then keeps polling until every
//!   submission it handed to the writer has either committed and had its PUBACK written, or
//!   been dropped uncommitted (never acked: the broker redelivers it, which is correct); then
//!   the source sends DISCONNECT behind those PUBACKs and waits for the broker to close the
//!   connection, which proves the broker read them. So a message committed by this session is
//!   never redelivered to the next one, and a reload that changes the sensor mapping cannot
//!   store it again under a new id. The wait is bounded by [`STOP_FLUSH_MAX`] (inside the
//!   agent's own drain bound, `ops.shutdown_timeout_s`); if it runs out, or the connection is
//!   down or breaks, the source stops anyway and logs "acks not confirmed": those messages are
//!   redelivered as after a crash (deduplicated unless their sensor id changed).
//! - Memory is bounded without ever pausing the poller: publishes waiting for room in the
//!   writer's channel sit in `waiting`, which only grows while acks are withheld, and the
//!   broker stops delivering QoS 1/2 once its in-flight window (Mosquitto
//!   `max_inflight_messages`, default 20) is full of unacknowledged messages. QoS 0 publishes
//!   (never redelivered, never acked) are dropped and counted past [`QOS0_WAITING_MAX`].
//! - Connection errors are logged and retried with backoff (100 ms .. 30 s) by polling again;
//!   rumqttc reconnects and resends the session. A failing source never stops other sources.
//! - Payloads larger than `max_payload_bytes` are dead-lettered; rumqttc's own packet limit is
//!   set above that so such a publish does not break the connection.
//! - A filter removed from `[[mqtt.subscribe]]` is unsubscribed at the next connect, and the
//!   messages the session had queued for it are acked, counted and dropped, never
//!   dead-lettered ([`subscriptions`]: the durable record of what was subscribed, and why a
//!   topic never subscribed by this source is still dead-lettered).

pub mod session;
pub mod stop;
pub mod subscriptions;

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::Transport;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use toml::Spanned;

use session::{Client, Event, EventLoop, Publish, RequestError, Settings, Version};
use stop::{AckLedger, Outcome, StopReport};
use subscriptions::{Delivery, Record, Requests, Subscriptions};

use edge_protocol::backoff::Backoff;
use tokio::time::Instant;

use super::{Context, Family, Kind, SourceHealth, SourceState, Task};
use crate::clock::unix_ms;
use crate::config::{Config, Idempotency, MqttSource};
use crate::ingest::{DeadLetter, Dedupe, StateWrite, Submission};
use crate::mapping::{BrokerUrl, Mapper, Origin};
use crate::source::payload::PayloadParser;
use crate::source::sparkplug::Sparkplug;

/// QoS 0 publishes allowed to wait for the writer before new ones are dropped.
pub const QOS0_WAITING_MAX: usize = 10_000;
/// Topics whose dropped late messages (unsubscribed filters) are logged, once each, per run;
/// past that they are only counted.
pub const UNSUBSCRIBED_LOGGED_MAX: usize = 1_024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The longest a stop waits for the writer's last commit, the acks it releases and the broker's
/// close after our DISCONNECT (usually a commit and a round trip: milliseconds).
pub const STOP_FLUSH_MAX: Duration = Duration::from_secs(5);

/// The broker's session lifetime after a disconnect when `session_expiry_s` is not set (MQTT 5,
/// persistent session): 7 days, a long weekend of a gateway switched off with margin.
pub const SESSION_EXPIRY_DEFAULT_S: u32 = 7 * 24 * 3600;

/// The ingest writer's channel is closed: the agent is stopping.
#[derive(Debug)]
struct WriterGone;

/// An MQTT 5 publish whose topic name is not UTF-8 (the protocol requires UTF-8).
#[derive(Debug, thiserror::Error)]
#[error("topic name is not UTF-8")]
struct TopicNotUtf8;

/// Why a source could not start. Fatal for that source only.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("source `{source_name}`: bad url")]
    Url { source_name: String },
    #[error("source `{source_name}`: environment variable `{var}` is not set")]
    PasswordEnv { source_name: String, var: String },
    #[error("source `{source_name}`: cannot read {what} `{path}`: {error}")]
    File {
        source_name: String,
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        error: std::io::Error,
    },
    /// A `password_file` every user may read ([`edge_config_toml::secret`]'s shared wording).
    #[error("source `{source_name}`: {error}")]
    Secret {
        source_name: String,
        #[source]
        error: edge_config_toml::secret::SecretFileError,
    },
}

/// Live counters of one source.
#[derive(Debug, Default)]
pub struct MqttCounters {
    pub received: AtomicU64,
    pub connects: AtomicU64,
    pub connection_errors: AtomicU64,
    pub qos0_dropped: AtomicU64,
    /// Publishes on a filter this source unsubscribed, acked and dropped
    /// ([`subscriptions`], "Late messages").
    pub unsubscribed_dropped: AtomicU64,
}

/// The MQTT source kind: `[[mqtt]]` tables, the `edge_mqtt_*` families, the health rule below.
pub static KIND: Kind = Kind {
    name: "mqtt",
    families: &[
        Family {
            name: "edge_mqtt_received_total",
            help: "MQTT publishes received.",
        },
        Family {
            name: "edge_mqtt_connects_total",
            help: "MQTT ConnAcks.",
        },
        Family {
            name: "edge_mqtt_connection_errors_total",
            help: "MQTT connection errors.",
        },
        Family {
            name: "edge_mqtt_qos0_dropped_total",
            help: "QoS 0 publishes dropped under backpressure.",
        },
        Family {
            name: "edge_mqtt_unsubscribed_dropped_total",
            help: "Publishes on a topic filter removed from the configuration, acked and dropped.",
        },
    ],
    names: |config| {
        config
            .mqtt
            .iter()
            .map(|s| s.name.get_ref().clone())
            .collect()
    },
    spawn,
    health: || Box::<MqttHealth>::default(),
};

/// Positions in [`MqttCounters::values`] (the order of `KIND.families`).
const CONNECTS: usize = 1;
const CONNECTION_ERRORS: usize = 2;

source_counters!(MqttCounters {
    received,
    connects,
    connection_errors,
    qos0_dropped,
    unsubscribed_dropped
});

/// The MQTT health rule: `connecting` until the first ConnAck; then `connected` after a sample
/// in which `connects` advanced, `disconnected` after one in which only `connection_errors` did.
/// When both advanced within one sample the source counts as connected: rumqttc resets its
/// backoff on ConnAck, so a source that failed again shows a new error within the next sample.
/// (Derived from counters, so a state change is seen within about a second.)
#[derive(Debug)]
struct MqttHealth {
    connects: u64,
    errors: u64,
    state: SourceState,
}

impl Default for MqttHealth {
    fn default() -> Self {
        MqttHealth {
            connects: 0,
            errors: 0,
            state: SourceState::Connecting,
        }
    }
}

impl SourceHealth for MqttHealth {
    fn observe(&mut self, _now: Instant, values: &[u64]) -> SourceState {
        let connects = values.get(CONNECTS).copied().unwrap_or(0);
        let errors = values.get(CONNECTION_ERRORS).copied().unwrap_or(0);
        let connected = std::mem::replace(&mut self.connects, connects) != connects;
        let failed = std::mem::replace(&mut self.errors, errors) != errors;
        self.state = match (connected, failed) {
            (true, _) => SourceState::Connected,
            (false, true) => SourceState::Disconnected,
            (false, false) if connects == 0 && self.state != SourceState::Disconnected => {
                SourceState::Connecting
            }
            (false, false) => self.state,
        };
        self.state
    }
}

/// One task per `[[mqtt]]` table.
fn spawn(config: &Config, cx: &Context<'_>) -> Vec<Task> {
    let max_payload_bytes = *config.buffer.max_payload_bytes.get_ref();
    let tasks = config.mqtt.iter().map(|source| {
        let task = MqttSourceTask {
            sparkplug: Sparkplug::for_source(source, cx, max_payload_bytes),
            parser: PayloadParser::new(&source.payload, max_payload_bytes),
            subscribed_before: stored_subscriptions(cx, source.name.get_ref()),
            config: source.clone(),
            mapper: cx.mapper.clone(),
            max_payload_bytes,
            submissions: cx.submissions.clone(),
            counters: cx.registry.counters(&KIND, source.name.get_ref()),
            cancel: cx.cancel.clone(),
        };
        let name = source.name.get_ref().clone();
        Box::pin(async move {
            if let Err(error) = task.run().await {
                // One failing source does not stop the others.
                tracing::error!(source = name, %error, "MQTT source did not start");
            }
        }) as Task
    });
    tasks.collect()
}

/// `source`'s stored subscriptions record; `None` (logged) when it cannot be read, so the
/// source starts as on its first run and records afresh.
fn stored_subscriptions(cx: &Context<'_>, source: &str) -> Option<Record> {
    match subscriptions::load(&cx.database, source) {
        Ok(Some(Ok(record))) => Some(record),
        Ok(None) => None,
        Ok(Some(Err(error))) => {
            tracing::error!(source, %error, "MQTT subscriptions record unreadable; filters removed from the configuration since it was written stay subscribed");
            None
        }
        Err(error) => {
            tracing::error!(source, %error, "MQTT subscriptions record not loaded; filters removed from the configuration since it was written stay subscribed");
            None
        }
    }
}

/// Everything one MQTT source needs.
pub struct MqttSourceTask {
    pub config: MqttSource,
    /// The subscriptions record as stored at spawn (`None`: never written or unreadable).
    pub subscribed_before: Option<Record>,
    pub parser: PayloadParser,
    /// `format = "sparkplug_b"`: the stateful decoder used instead of `parser`.
    pub sparkplug: Option<Arc<Sparkplug>>,
    pub mapper: Arc<Mapper>,
    pub max_payload_bytes: usize,
    pub submissions: mpsc::Sender<Submission>,
    pub counters: Arc<MqttCounters>,
    pub cancel: CancellationToken,
}

enum Command {
    /// The connect sequence of one ConnAck: UNSUBSCRIBEs, then the SUBSCRIBE.
    Connect(Requests),
    Ack(Publish),
    /// The last request of a stop: queued behind every ack.
    Disconnect,
}

impl MqttSourceTask {
    /// Resolves the session settings: persistent session, manual acks, TLS, credentials.
    pub fn settings(config: &MqttSource, max_payload_bytes: usize) -> Result<Settings, MqttError> {
        let source_name = config.name.get_ref().clone();
        let url = BrokerUrl::parse(config.url.get_ref()).map_err(|_| MqttError::Url {
            source_name: source_name.clone(),
        })?;
        let password = match (&config.password_env, &config.password_file) {
            (Some(var), _) => {
                Some(
                    std::env::var(var.get_ref()).map_err(|_| MqttError::PasswordEnv {
                        source_name: source_name.clone(),
                        var: var.get_ref().clone(),
                    })?,
                )
            }
            (None, Some(path)) => Some({
                edge_config_toml::secret::check_private(path, "password_file").map_err(
                    |error| MqttError::Secret {
                        source_name: source_name.clone(),
                        error,
                    },
                )?;
                std::fs::read_to_string(path)
                    .map_err(|error| MqttError::File {
                        source_name: source_name.clone(),
                        what: "password_file",
                        path: path.clone(),
                        error,
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned()
            }),
            (None, None) => None,
        };
        let credentials = (config.username.is_some() || password.is_some()).then(|| {
            (
                config.username.clone().unwrap_or_default(),
                password.unwrap_or_default(),
            )
        });
        let read = |file: &Spanned<PathBuf>, what| {
            std::fs::read(file.get_ref()).map_err(|error| MqttError::File {
                source_name: source_name.clone(),
                what,
                path: file.get_ref().clone(),
                error,
            })
        };
        let transport = if url.tls {
            Some(match &config.ca_file {
                Some(ca) => {
                    let pem = read(ca, "ca_file")?;
                    let client_auth = match (&config.cert_file, &config.key_file) {
                        (Some(cert), Some(key)) => {
                            Some((read(cert, "cert_file")?, read(key, "key_file")?))
                        }
                        _ => None,
                    };
                    Transport::tls(pem, client_auth, None)
                }
                None => Transport::tls_with_default_config(),
            })
        } else {
            None
        };
        let default_expiry = if config.persistent_session {
            SESSION_EXPIRY_DEFAULT_S
        } else {
            0
        };
        Ok(Settings {
            client_id: config.client_id.get_ref().clone(),
            host: url.host,
            port: url.port,
            keep_alive: Duration::from_secs(config.keep_alive_s.max(1)),
            persistent_session: config.persistent_session,
            session_expiry_s: config
                .session_expiry_s
                .as_ref()
                .map_or(default_expiry, |s| *s.get_ref()),
            max_packet_bytes: max_payload_bytes.saturating_mul(2) + 65_536,
            credentials,
            transport,
        })
    }

    fn version(&self) -> Version {
        match self.config.version.get_ref() {
            5 => Version::V5,
            _ => Version::V311,
        }
    }

    /// Runs the source until cancelled, then stops as the module doc says: every ack owed
    /// flushed to the broker, then DISCONNECT. Errors only when it cannot start.
    pub async fn run(self) -> Result<(), MqttError> {
        let settings = Self::settings(&self.config, self.max_payload_bytes)?;
        let (client, mut eventloop) = session::connect(self.version(), settings, 1024);
        let (commands, command_rx) = mpsc::unbounded_channel();
        let filters: Vec<(String, u8)> = self
            .config
            .subscribe
            .iter()
            .map(|s| (s.topic.get_ref().clone(), *s.qos.get_ref()))
            .collect();
        let mut subscriptions = Subscriptions::new(&filters, self.subscribed_before.clone());
        let name = self.config.name.get_ref().clone();
        let acker = tokio::spawn(acker(client, command_rx, name.clone()));
        let ledger = Arc::new(AckLedger::default());
        let connected = self
            .poll(&mut eventloop, &commands, &ledger, &mut subscriptions)
            .await;
        let deadline = tokio::time::Instant::now() + STOP_FLUSH_MAX;
        let report =
            stop::flush_and_disconnect(&mut eventloop, &commands, &ledger, connected, deadline)
                .await;
        log_stop(&name, &report, ledger.dropped());
        // Only now: the acker holds the client, and rumqttc ends the session early when every
        // client handle is gone.
        acker.abort();
        Ok(())
    }

    /// Polls and submits until cancelled (or the writer is gone); returns whether a session is
    /// up (a ConnAck since the last connection error), so that acks can still be flushed.
    /// Publishes still waiting for the writer are dropped on return, their acks unrun.
    async fn poll(
        &self,
        eventloop: &mut EventLoop,
        commands: &mpsc::UnboundedSender<Command>,
        ledger: &Arc<AckLedger>,
        subscriptions: &mut Subscriptions,
    ) -> bool {
        let name = self.config.name.get_ref().as_str();
        let dedupe = match self.config.idempotency {
            Idempotency::SensorTs => Dedupe::SensorTs,
            Idempotency::PayloadSeq => Dedupe::SensorSeq,
        };
        let mut waiting: VecDeque<Submission> = VecDeque::new();
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut connected = false;
        let mut logged_topics: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return connected,
                permit = self.submissions.reserve(), if !waiting.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(s) = waiting.pop_front() {
                            permit.send(s);
                        }
                    }
                    // The writer is gone: the agent is stopping.
                    Err(_) => return connected,
                },
                event = eventloop.poll() => match event {
                    Ok(Event::ConnAck { session_present }) => {
                        backoff.reset();
                        connected = true;
                        self.counters.connects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(source = name, session_present, "MQTT connected");
                        let (requests, row) = subscriptions.connected();
                        if !requests.unsubscribe.is_empty() {
                            tracing::info!(source = name, filters = ?requests.unsubscribe, "unsubscribing from filters no longer configured");
                        }
                        let _ = commands.send(Command::Connect(requests));
                        if let Some(row) = row {
                            if self.offer(&mut waiting, self.record(row)).is_err() {
                                return connected;
                            }
                        }
                    }
                    Ok(Event::Publish(publish)) => {
                        self.counters.received.fetch_add(1, Ordering::Relaxed);
                        let delivery = publish.topic().map(|t| subscriptions.delivery(t));
                        if delivery == Some(Delivery::Unsubscribed) {
                            self.drop_unsubscribed(publish, commands, &mut logged_topics);
                            continue;
                        }
                        if publish.at_most_once() && waiting.len() >= QOS0_WAITING_MAX {
                            self.counters.qos0_dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let submission = self.submission(publish, dedupe, commands, ledger);
                        if self.offer(&mut waiting, submission).is_err() {
                            return connected;
                        }
                    }
                    Ok(Event::SubAck { refused }) => {
                        if let Some(codes) = refused {
                            tracing::error!(source = name, codes, "broker refused a subscription");
                        }
                        if let Some(row) = subscriptions.subscribed() {
                            if self.offer(&mut waiting, self.record(row)).is_err() {
                                return connected;
                            }
                        }
                    }
                    Ok(Event::UnsubAck { refused }) => {
                        if let Some(codes) = refused {
                            tracing::warn!(source = name, codes, "broker refused to unsubscribe a filter no longer configured; its messages are dropped as they arrive");
                        }
                        if let Some(row) = subscriptions.unsubscribed() {
                            if self.offer(&mut waiting, self.record(row)).is_err() {
                                return connected;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        connected = false;
                        subscriptions.disconnected();
                        self.counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                        let delay = backoff.next_delay();
                        tracing::warn!(source = name, %error, retry_in_ms = delay.as_millis() as u64, "MQTT connection failed");
                        tokio::select! {
                            _ = self.cancel.cancelled() => return connected,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                },
            }
        }
    }

    /// Hands `submission` to the writer behind those already waiting (arrival order), or keeps
    /// it waiting while the writer's channel is full. `Err` when the writer is gone.
    fn offer(
        &self,
        waiting: &mut VecDeque<Submission>,
        submission: Submission,
    ) -> Result<(), WriterGone> {
        if !waiting.is_empty() {
            waiting.push_back(submission);
            return Ok(());
        }
        match self.submissions.try_send(submission) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(s)) => {
                waiting.push_back(s);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(WriterGone),
        }
    }

    /// The submission writing `row` as this source's subscriptions record: no readings, nothing
    /// to ack; it commits in order behind the messages submitted before it.
    fn record(&self, row: Record) -> Submission {
        let name = self.config.name.get_ref();
        tracing::info!(
            source = name.as_str(),
            subscribed = row.subscribed.len(),
            unsubscribed = row.unsubscribed.len(),
            "MQTT subscriptions confirmed by the broker; recording them"
        );
        Submission {
            readings: Vec::new(),
            dead_letters: Vec::new(),
            state: vec![StateWrite {
                key: subscriptions::key(name),
                value: row.encode(),
            }],
            ack: None,
        }
    }

    /// A publish on a filter this source unsubscribed: acked at once (nothing of it is kept, so
    /// nothing needs to be durable first), counted, its topic logged once.
    fn drop_unsubscribed(
        &self,
        publish: Publish,
        commands: &mpsc::UnboundedSender<Command>,
        logged: &mut HashSet<String>,
    ) {
        self.counters
            .unsubscribed_dropped
            .fetch_add(1, Ordering::Relaxed);
        let topic = publish.topic().unwrap_or_default();
        if logged.len() < UNSUBSCRIBED_LOGGED_MAX && !logged.contains(topic) {
            logged.insert(topic.to_owned());
            tracing::info!(
                source = self.config.name.get_ref().as_str(),
                topic,
                "dropping messages on a topic whose filter was removed from the configuration (queued before the unsubscribe; counted in edge_mqtt_unsubscribed_dropped_total)"
            );
        }
        if !publish.at_most_once() {
            let _ = commands.send(Command::Ack(publish));
        }
    }

    /// The message's user properties that this source lists, for the id templates (the first
    /// value of a property sent twice).
    fn properties(&self, publish: &Publish) -> Vec<(String, String)> {
        let listed = &self.config.user_properties;
        if listed.is_empty() {
            return Vec::new();
        }
        let mut found: Vec<(String, String)> = Vec::new();
        for (key, value) in publish.user_properties() {
            if listed.iter().any(|l| l.get_ref() == key) && !found.iter().any(|(k, _)| k == key) {
                found.push((key.clone(), value.clone()));
            }
        }
        found
    }

    /// Parses and maps one publish. Whatever fails becomes a dead letter in the same
    /// submission, so a bad message is acked only once its dead letter is durable. A QoS 1/2
    /// submission is owed in `ledger` until its ack runs or it is dropped.
    fn submission(
        &self,
        publish: Publish,
        dedupe: Dedupe,
        commands: &mpsc::UnboundedSender<Command>,
        ledger: &Arc<AckLedger>,
    ) -> Submission {
        let name = self.config.name.get_ref().as_str();
        let now = unix_ms();
        let mut readings = Vec::new();
        let mut dead_letters = Vec::new();
        let mut state = Vec::new();
        let payload = publish.payload();
        let properties = self.properties(&publish);
        let parsed = match (&self.sparkplug, publish.topic()) {
            (Some(sparkplug), Some(topic)) => {
                let parts = sparkplug.parts(&self.mapper, topic, payload, now, dedupe);
                (readings, dead_letters, state) = (parts.readings, parts.dead_letters, parts.state);
                Ok(Vec::new())
            }
            _ => self.parser.parse(payload, now),
        };
        match (publish.topic(), parsed) {
            (None, _) => dead_letters.push(DeadLetter::new(now, name, &TopicNotUtf8, payload)),
            (Some(topic), Ok(raws)) => {
                let origin = Origin::Topic {
                    topic,
                    properties: &properties,
                };
                for raw in raws {
                    match self.mapper.map(name, origin, &raw, now) {
                        Ok(reading) => readings.push((reading, dedupe)),
                        Err(error) => {
                            dead_letters.push(DeadLetter::new(now, name, &error, payload))
                        }
                    }
                }
            }
            (Some(_), Err(error)) => dead_letters.push(DeadLetter::new(now, name, &error, payload)),
        }
        if !dead_letters.is_empty() {
            tracing::debug!(
                source = name,
                topic = publish.topic(),
                "dead-lettered part of a message"
            );
        }
        let ack: Option<Box<dyn FnOnce() + Send>> = if publish.at_most_once() {
            None
        } else {
            let commands = commands.clone();
            let owed = ledger.owe();
            Some(Box::new(move || {
                let _ = commands.send(Command::Ack(publish));
                owed.ran();
            }))
        };
        Submission {
            readings,
            dead_letters,
            state,
            ack,
        }
    }
}

/// Sends acks, the connect sequences (unsubscribe, subscribe) and the final DISCONNECT through
/// the client, in the order asked; never runs on the polling task. It does not stop on
/// cancellation: acks released by the writer's last commit still arrive then, and the stop needs
/// them sent ([`stop`]). The source aborts it once the event loop is done.
async fn acker(client: Client, mut commands: mpsc::UnboundedReceiver<Command>, name: String) {
    while let Some(command) = commands.recv().await {
        let result = match command {
            Command::Ack(publish) => client.ack(&publish).await,
            Command::Connect(requests) => connect_requests(&client, &requests).await,
            Command::Disconnect => client.disconnect().await,
        };
        if let Err(error) = result {
            // The event loop is gone (agent stopping); an ack not sent is a redelivery later.
            tracing::debug!(source = name, %error, "MQTT request not sent");
        }
    }
}

/// The connect sequence: each UNSUBSCRIBE, then the SUBSCRIBE ([`subscriptions`]).
async fn connect_requests(client: &Client, requests: &Requests) -> Result<(), RequestError> {
    for filter in &requests.unsubscribe {
        client.unsubscribe(filter).await?;
    }
    if requests.subscribe.is_empty() {
        return Ok(());
    }
    client.subscribe(&requests.subscribe).await
}

/// One line per stop: info when the broker was shown every ack, a warning otherwise.
fn log_stop(name: &str, report: &StopReport, dropped_unrun: u64) {
    let elapsed_ms = report.elapsed.as_millis() as u64;
    // Never committed, never acked: the broker redelivers them to the next session.
    let redelivered = report.not_submitted + dropped_unrun;
    match report.outcome {
        Outcome::Disconnected { broker_closed } => tracing::info!(
            source = name,
            acks_flushed = report.acks_flushed,
            uncommitted_left_to_broker = redelivered,
            broker_closed,
            elapsed_ms,
            "MQTT source stopped: the acks of every committed message reached the broker before DISCONNECT"
        ),
        outcome => tracing::warn!(
            source = name,
            ?outcome,
            acks_flushed = report.acks_flushed,
            acks_owed = report.owed,
            uncommitted_left_to_broker = redelivered,
            elapsed_ms,
            "MQTT source stopped with acks not confirmed by the broker: it redelivers those \
             messages (deduplicated unless the sensor mapping changed their id)"
        ),
    }
}

#[cfg(test)]
mod tests;

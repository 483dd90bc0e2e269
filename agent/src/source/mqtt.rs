//! The MQTT source: one broker connection (rumqttc), persistent session, manual acks.
//!
//! Two tasks per source:
//!
//! - the **poller** owns the `EventLoop` and polls it without pause, whatever happens
//!   downstream, so keepalive pings never lapse. Each incoming publish is parsed and mapped
//!   into a [`Submission`] (readings plus dead letters) whose ack, when run by the ingest
//!   writer after its commit, hands the publish to
//! - the **acker**, which owns the `AsyncClient` side and awaits `ack()` (and `subscribe`).
//!   FACTS.md: awaiting `ack()` on the polling task deadlocks under a flood, so it never does.
//!
//! # Invariants and crash reasoning
//!
//! - A QoS 1/2 publish is acknowledged (PUBACK) only from its submission's ack, which the
//!   writer runs after the commit that made its readings (or its dead letter) durable. If the
//!   agent dies first, the broker still holds the message for our persistent session
//!   (`clean_session = false`, same client id) and redelivers it; the dedupe index drops the
//!   copy if the commit had happened.
//! - Memory is bounded without ever pausing the poller: publishes waiting for room in the
//!   writer's channel sit in `waiting`, which only grows while acks are withheld, and the
//!   broker stops delivering QoS 1/2 once its in-flight window (Mosquitto
//!   `max_inflight_messages`, default 20) is full of unacknowledged messages. QoS 0 publishes
//!   (never redelivered, never acked) are dropped and counted past [`QOS0_WAITING_MAX`].
//! - Connection errors are logged and retried with backoff (100 ms .. 30 s) by polling again;
//!   rumqttc reconnects and resends the session. A failing source never stops other sources.
//! - Payloads larger than `max_payload_bytes` are dead-lettered; rumqttc's own packet limit is
//!   set above that so such a publish does not break the connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeFilter, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Idempotency, MqttSource};
use crate::ingest::{DeadLetter, Dedupe, Submission};
use crate::mapping::{BrokerUrl, Mapper, Origin};
use crate::source::payload::PayloadParser;

/// QoS 0 publishes allowed to wait for the writer before new ones are dropped.
pub const QOS0_WAITING_MAX: usize = 10_000;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

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
}

/// Live counters of one source.
#[derive(Debug, Default)]
pub struct SourceCounters {
    pub received: AtomicU64,
    pub connects: AtomicU64,
    pub connection_errors: AtomicU64,
    pub qos0_dropped: AtomicU64,
}

/// Everything one MQTT source needs.
pub struct MqttSourceTask {
    pub config: MqttSource,
    pub parser: PayloadParser,
    pub mapper: Arc<Mapper>,
    pub max_payload_bytes: usize,
    pub submissions: mpsc::Sender<Submission>,
    pub counters: Arc<SourceCounters>,
    pub cancel: CancellationToken,
}

enum Command {
    Subscribe,
    Ack(Publish),
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl MqttSourceTask {
    /// Builds the rumqttc options: persistent session, manual acks, TLS, credentials.
    pub fn options(
        config: &MqttSource,
        max_payload_bytes: usize,
    ) -> Result<MqttOptions, MqttError> {
        let source_name = config.name.get_ref().clone();
        let url = BrokerUrl::parse(config.url.get_ref()).map_err(|_| MqttError::Url {
            source_name: source_name.clone(),
        })?;
        let mut options = MqttOptions::new(config.client_id.get_ref().clone(), url.host, url.port);
        options
            .set_keep_alive(Duration::from_secs(config.keep_alive_s.max(1)))
            .set_clean_session(!config.persistent_session)
            .set_manual_acks(true)
            .set_max_packet_size(max_payload_bytes.saturating_mul(2) + 65_536, 65_536);
        let password = match (&config.password_env, &config.password_file) {
            (Some(var), _) => {
                Some(
                    std::env::var(var.get_ref()).map_err(|_| MqttError::PasswordEnv {
                        source_name: source_name.clone(),
                        var: var.get_ref().clone(),
                    })?,
                )
            }
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|error| MqttError::File {
                        source_name: source_name.clone(),
                        what: "password_file",
                        path: path.clone(),
                        error,
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        if config.username.is_some() || password.is_some() {
            options.set_credentials(
                config.username.clone().unwrap_or_default(),
                password.unwrap_or_default(),
            );
        }
        if url.tls {
            let transport = match &config.ca_file {
                Some(ca) => {
                    let pem = std::fs::read(ca.get_ref()).map_err(|error| MqttError::File {
                        source_name,
                        what: "ca_file",
                        path: ca.get_ref().clone(),
                        error,
                    })?;
                    Transport::tls(pem, None, None)
                }
                None => Transport::tls_with_default_config(),
            };
            options.set_transport(transport);
        }
        Ok(options)
    }

    /// Runs the source until cancelled. Errors only when it cannot start.
    pub async fn run(self) -> Result<(), MqttError> {
        let options = Self::options(&self.config, self.max_payload_bytes)?;
        let (client, eventloop) = AsyncClient::new(options, 1024);
        let (commands, command_rx) = mpsc::unbounded_channel();
        let filters: Vec<SubscribeFilter> = self
            .config
            .subscribe
            .iter()
            .map(|s| SubscribeFilter::new(s.topic.get_ref().clone(), qos(*s.qos.get_ref())))
            .collect();
        let name = self.config.name.get_ref().clone();
        let acker = tokio::spawn(acker(
            client,
            command_rx,
            filters,
            name.clone(),
            self.cancel.clone(),
        ));
        self.poll(eventloop, commands).await;
        acker.abort();
        Ok(())
    }

    async fn poll(&self, mut eventloop: EventLoop, commands: mpsc::UnboundedSender<Command>) {
        let name = self.config.name.get_ref().as_str();
        let dedupe = match self.config.idempotency {
            Idempotency::SensorTs => Dedupe::SensorTs,
            Idempotency::PayloadSeq => Dedupe::SensorSeq,
        };
        let mut waiting: VecDeque<Submission> = VecDeque::new();
        let mut backoff = BACKOFF_MIN;
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return,
                permit = self.submissions.reserve(), if !waiting.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(s) = waiting.pop_front() {
                            permit.send(s);
                        }
                    }
                    Err(_) => return, // the writer is gone: the agent is stopping
                },
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                        backoff = BACKOFF_MIN;
                        self.counters.connects.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(source = name, session_present = connack.session_present, "MQTT connected");
                        let _ = commands.send(Command::Subscribe);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        self.counters.received.fetch_add(1, Ordering::Relaxed);
                        if publish.qos == QoS::AtMostOnce && waiting.len() >= QOS0_WAITING_MAX {
                            self.counters.qos0_dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let submission = self.submission(publish, dedupe, &commands);
                        if !waiting.is_empty() {
                            // Keep arrival order behind those already waiting.
                            waiting.push_back(submission);
                            continue;
                        }
                        match self.submissions.try_send(submission) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(s)) => waiting.push_back(s),
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(suback))) => {
                        if suback.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            tracing::error!(source = name, codes = ?suback.return_codes, "broker refused a subscription");
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        self.counters.connection_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(source = name, %error, retry_in_ms = backoff.as_millis() as u64, "MQTT connection failed");
                        tokio::select! {
                            _ = self.cancel.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                },
            }
        }
    }

    /// Parses and maps one publish. Whatever fails becomes a dead letter in the same
    /// submission, so a bad message is acked only once its dead letter is durable.
    fn submission(
        &self,
        publish: Publish,
        dedupe: Dedupe,
        commands: &mpsc::UnboundedSender<Command>,
    ) -> Submission {
        let name = self.config.name.get_ref().as_str();
        let now = unix_ms();
        let mut readings = Vec::new();
        let mut dead_letters = Vec::new();
        match self.parser.parse(&publish.payload, now) {
            Ok(raws) => {
                for raw in raws {
                    match self
                        .mapper
                        .map(name, Origin::Topic(&publish.topic), &raw, now)
                    {
                        Ok(reading) => readings.push((reading, dedupe)),
                        Err(error) => {
                            dead_letters.push(DeadLetter::new(now, name, &error, &publish.payload))
                        }
                    }
                }
            }
            Err(error) => dead_letters.push(DeadLetter::new(now, name, &error, &publish.payload)),
        }
        if !dead_letters.is_empty() {
            tracing::debug!(
                source = name,
                topic = publish.topic,
                "dead-lettered part of a message"
            );
        }
        let ack: Option<Box<dyn FnOnce() + Send>> = if publish.qos == QoS::AtMostOnce {
            None
        } else {
            let commands = commands.clone();
            Some(Box::new(move || {
                let _ = commands.send(Command::Ack(publish));
            }))
        };
        Submission {
            readings,
            dead_letters,
            ack,
        }
    }
}

/// Sends acks and subscriptions through the client; never runs on the polling task.
async fn acker(
    client: AsyncClient,
    mut commands: mpsc::UnboundedReceiver<Command>,
    filters: Vec<SubscribeFilter>,
    name: String,
    cancel: CancellationToken,
) {
    loop {
        let command = tokio::select! {
            _ = cancel.cancelled() => return,
            c = commands.recv() => match c { Some(c) => c, None => return },
        };
        let result = match command {
            Command::Ack(publish) => client.ack(&publish).await,
            Command::Subscribe if filters.is_empty() => Ok(()),
            Command::Subscribe => client.subscribe_many(filters.clone()).await,
        };
        if let Err(error) = result {
            // The event loop is gone (agent stopping); an ack not sent is a redelivery later.
            tracing::debug!(source = name, %error, "MQTT request not sent");
        }
    }
}

#[cfg(test)]
mod tests;

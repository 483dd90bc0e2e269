//! The MQTT transport: every device publishes each reading as one message.
//!
//! Topics and payloads are described in [`super::payload`]. The client is rumqttc with a
//! persistent session (`clean_session = false`, client id `--client-id`, default
//! `firmware-sim-<pid>-<seed>`), so QoS 1 and 2 messages not yet acknowledged when a connection
//! drops are sent again after the reconnect. At most `--inflight` (default 20) publishes are
//! unacknowledged at once: Mosquitto drops a client that sends more QoS 2 messages than its
//! `max_inflight_messages` (20 by default) before releasing them (seen: the connection is closed
//! with "Bad socket read/write ... Unknown error" under load).
//!
//! # Tasks
//!
//! - The **poller** owns the `EventLoop` and does nothing but poll it (`docs/DESIGN.md`
//!   section 9: never await a client call on the task that polls the loop, or both wait on each
//!   other under load). It
//!   counts publishes written and acknowledged (PUBACK for QoS 1, PUBCOMP for QoS 2), injects
//!   disconnects (`EventLoop::clean`, then no polling for `--disconnect-secs`), and reconnects
//!   after errors with a short pause.
//! - The **publisher** (the caller's task) samples the devices on schedule and awaits
//!   `AsyncClient::publish`, which only waits for room in the client's request queue.
//!
//! Shutdown: the publisher stops sampling, then waits (up to `--drain-timeout`) until every
//! publish is acknowledged (QoS 0: written), sends DISCONNECT and lets the poller end.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio_util::sync::CancellationToken;

use super::faults::Mangler;
use super::ledger::{unix_ms_now, Ledger, LedgerRecord};
use super::payload::{self, PayloadFormat, TopicTemplate};
use super::rng::Rng;
use super::sim::{RunConfig, Sampler, Schedule};
use super::{Progress, RunError, RunSummary};

/// MQTT options (command line).
#[derive(Debug, Clone, clap::Args)]
pub struct MqttConfig {
    /// Broker URL: `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (8883).
    #[arg(long)]
    pub url: String,
    /// PEM file of the CA that signed the broker's certificate (mqtts).
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Topic template; placeholders {device}, {device_id}, {channel}, {channel_id}.
    #[arg(long, default_value_t = TopicTemplate::default())]
    pub topic: TopicTemplate,
    /// Quality of service: 0, 1 or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload format.
    #[arg(long, value_enum, default_value_t = PayloadFormat::Json)]
    pub payload: PayloadFormat,
    /// MQTT client id (default `firmware-sim-<pid>-<seed>`; two clients with one id take turns
    /// kicking each other off the broker).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Publishes in flight (unacknowledged) at most. Mosquitto's `max_inflight_messages` (20 by
    /// default) also bounds a client's incoming QoS 2 messages, and it drops a client that
    /// exceeds it, so keep this at or below the broker's value.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Keep-alive interval in seconds (at least 1).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_alive: u64,
}

impl MqttConfig {
    /// Options for `url` with defaults (JSON payloads, QoS 1, default topic layout).
    pub fn new(url: &str) -> MqttConfig {
        MqttConfig {
            url: url.to_owned(),
            ca: None,
            topic: TopicTemplate::default(),
            qos: 1,
            payload: PayloadFormat::Json,
            client_id: None,
            inflight: 20,
            keep_alive: 5,
        }
    }

    fn options(&self, seed: u64) -> Result<MqttOptions, RunError> {
        let bad_url = || RunError::MqttUrl(self.url.clone());
        let (scheme, rest) = self.url.split_once("://").ok_or_else(bad_url)?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(bad_url()),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().map_err(|_| bad_url())?),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad_url());
        }
        let id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("firmware-sim-{}-{seed}", std::process::id()));
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(Duration::from_secs(self.keep_alive.max(1)));
        options.set_clean_session(false);
        options.set_inflight(self.inflight.max(1));
        if tls {
            let ca_path = self.ca.clone().ok_or(RunError::MqttCaMissing)?;
            let ca = std::fs::read(&ca_path).map_err(|source| RunError::MqttCa {
                path: ca_path.display().to_string(),
                source,
            })?;
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Simple {
                    ca,
                    alpn: None,
                    client_auth: None,
                },
            ));
        }
        Ok(options)
    }

    fn qos(&self) -> QoS {
        match self.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }
}

/// Counters the poller shares with the publisher.
#[derive(Debug, Default)]
struct PollStats {
    written: AtomicU64,
    acked: AtomicU64,
    connections: AtomicU64,
    errors: AtomicU64,
    done: AtomicBool,
}

/// One message on its way out.
#[derive(Debug, Clone)]
struct Message {
    topic: String,
    payload: Vec<u8>,
}

/// Hands one message to the client (QoS as configured, never retained).
async fn publish(client: &AsyncClient, message: Message, qos: QoS) -> Result<(), RunError> {
    client
        .publish(message.topic, qos, false, message.payload)
        .await
        .map_err(RunError::MqttClient)
}

/// Runs the MQTT transport until the configured count or duration, or until `cancel`.
pub async fn run(
    config: &RunConfig,
    mqtt: &MqttConfig,
    cancel: CancellationToken,
) -> Result<RunSummary, RunError> {
    let options = mqtt.options(config.seed)?;
    let mut ledger = match &config.ledger {
        Some(path) => Ledger::create(path)?,
        None => Ledger::disabled(),
    };
    ledger.write(&LedgerRecord::Start {
        transport: "mqtt".into(),
        seed: config.seed,
        devices: config.devices,
        channels: config.channels,
        unix_ms: unix_ms_now(),
    })?;

    let (client, eventloop) = AsyncClient::new(options, 1024);
    let stats = Arc::new(PollStats::default());
    let poller_stop = CancellationToken::new();
    let poller = tokio::spawn(poll(
        eventloop,
        config.clone(),
        Arc::clone(&stats),
        poller_stop.clone(),
    ));

    let qos = mqtt.qos();
    let mut samplers: Vec<Sampler> = config
        .device_ids()
        .map(|id| Sampler::new(config, id))
        .collect();
    let mut schedules: Vec<Schedule> = samplers
        .iter()
        .map(|_| Schedule::new(config.rate))
        .collect();
    let mut mangler: Mangler<Message> =
        Mangler::new(&config.faults, Rng::new(config.seed, u64::MAX));
    let mut progress = Progress::new(config.progress_secs);
    let start = Instant::now();
    let tick = Duration::from_millis(5);
    let mut published = 0u64;
    let mut readings = 0u64;
    let mut outcome = Ok(());

    'run: loop {
        let elapsed = start.elapsed();
        let time_up = config.duration().is_some_and(|d| elapsed >= d);
        let count_done = config
            .count
            .is_some_and(|n| samplers.iter().all(|s| s.sampled >= n));
        if time_up || count_done || cancel.is_cancelled() {
            break;
        }
        for (sampler, schedule) in samplers.iter_mut().zip(schedules.iter_mut()) {
            let mut due = schedule.due(elapsed, &config.faults, 10_000);
            if let Some(n) = config.count {
                due = due.min(n.saturating_sub(sampler.sampled));
            }
            for _ in 0..due {
                let sample = sampler.sample();
                let topic = mqtt.topic.render(sampler.device_id, sample.channel);
                let bytes = payload::encode(
                    mqtt.payload,
                    sampler.device_id,
                    sample.channel,
                    sample.ts_ms,
                    sample.value,
                );
                ledger.write(&LedgerRecord::Mqtt {
                    device: sampler.device_id,
                    channel: sample.channel,
                    topic: topic.clone(),
                    qos: mqtt.qos,
                    ts_ms: sample.ts_ms,
                    value: sample.value,
                })?;
                readings += 1;
                for message in mangler.process(Message {
                    topic,
                    payload: bytes,
                }) {
                    if let Err(e) = publish(&client, message, qos).await {
                        outcome = Err(e);
                        break 'run;
                    }
                    published += 1;
                }
            }
        }
        if let Some(message) = mangler.release() {
            if let Err(e) = publish(&client, message, qos).await {
                outcome = Err(e);
                break 'run;
            }
            published += 1;
        }
        progress.maybe_print(|| {
            format!(
                "mqtt: readings={readings} published={published} written={} acked={} duplicated={} reordered={} connections={} errors={}",
                stats.written.load(Ordering::Relaxed),
                stats.acked.load(Ordering::Relaxed),
                mangler.duplicated,
                mangler.reordered,
                stats.connections.load(Ordering::Relaxed),
                stats.errors.load(Ordering::Relaxed),
            )
        });
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = cancel.cancelled() => break,
        }
    }

    // Drain: wait until the broker has everything (or the timeout), then disconnect.
    let counter = if qos == QoS::AtMostOnce {
        &stats.written
    } else {
        &stats.acked
    };
    let deadline = Instant::now() + config.drain();
    while counter.load(Ordering::Relaxed) < published
        && Instant::now() < deadline
        && !stats.done.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained = counter.load(Ordering::Relaxed) >= published;
    // A failed DISCONNECT request only means the poller is gone already.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while !stats.done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    poller_stop.cancel();
    let _ = poller.await;

    let summary = RunSummary {
        readings,
        frames: published,
        acked: stats.acked.load(Ordering::Relaxed),
        retransmits: 0,
        evicted_readings: 0,
        drained,
    };
    ledger.write(&LedgerRecord::End {
        readings,
        frames: published,
        retransmits: 0,
        evicted_readings: 0,
        unix_ms: unix_ms_now(),
        clean: outcome.is_ok() && drained,
    })?;
    ledger.flush()?;
    outcome.map(|()| summary)
}

/// The poller task: polls the event loop until told to stop or the client disconnected.
async fn poll(
    mut eventloop: EventLoop,
    config: RunConfig,
    stats: Arc<PollStats>,
    stop: CancellationToken,
) {
    let start = Instant::now();
    let mut was_disconnected = false;
    loop {
        let elapsed = start.elapsed();
        if config.faults.disconnected(elapsed) {
            if !was_disconnected {
                tracing::info!("fault: dropping the MQTT connection");
                eventloop.clean();
                was_disconnected = true;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(20)) => continue,
                () = stop.cancelled() => break,
            }
        }
        was_disconnected = false;
        let event = tokio::select! {
            event = eventloop.poll() => event,
            () = stop.cancelled() => break,
        };
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                stats.written.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                stats.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                stats.connections.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "MQTT connection error; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                    () = stop.cancelled() => break,
                }
            }
        }
    }
    stats.done.store(true, Ordering::Relaxed);
}

//! One MQTT session over either protocol version: rumqttc's 3.1.1 client or its MQTT 5 client
//! (`rumqttc::v5`), behind the few operations the source uses.
//!
//! The two clients have the same shape (an `AsyncClient` that queues requests, an `EventLoop`
//! that must be polled) but separate types. The source needs only: connect with a persistent
//! session, poll for events, ack a publish, subscribe, unsubscribe, disconnect. [`EventLoop::poll`] folds
//! both versions' events into [`Event`], the handful the source and its stop act on, so the
//! poller, the acker and the stop sequence are written once.
//!
//! # MQTT 5 differences that matter here
//!
//! - **Session expiry.** An MQTT 5 session with no Session Expiry Interval ends when the network
//!   connection closes, so a persistent session sets one (`session_expiry_s`, default 7 days):
//!   the broker keeps the subscriptions and unacknowledged messages that long while the agent
//!   is away. `clean_start` is `!persistent_session`, as `clean_session` is for 3.1.1.
//! - **Maximum Packet Size** is sent to the broker in CONNECT. A 3.1.1 broker delivers a larger
//!   publish anyway (rumqttc then fails the connection); an MQTT 5 broker must not send it and
//!   drops it instead. The limit is twice `max_payload_bytes` plus 64 KiB either way, so a
//!   payload over `max_payload_bytes` is still delivered and dead-lettered unless it is over
//!   that as well.
//! - **Topic aliases** are not enabled (Topic Alias Maximum stays 0), so every publish carries
//!   its topic name.
//! - **User properties** of a publish are exposed by [`Publish::user_properties`].
//! - A DISCONNECT is answered by the broker closing the connection in both versions, which the
//!   stop sequence relies on ([`super::stop`]).

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5 as mqtt5;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{Outgoing, QoS};

/// The settings both versions share, already resolved from the configuration.
pub struct Settings {
    pub client_id: String,
    pub host: String,
    pub port: u16,
    pub keep_alive: Duration,
    pub persistent_session: bool,
    /// MQTT 5 only (ignored for 3.1.1).
    pub session_expiry_s: u32,
    pub max_packet_bytes: usize,
    pub credentials: Option<(String, String)>,
    pub transport: Option<rumqttc::Transport>,
}

/// Which client to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// Builds a client and its event loop; `cap` bounds the request channel.
pub fn connect(version: Version, settings: Settings, cap: usize) -> (Client, EventLoop) {
    match version {
        Version::V311 => {
            let (client, eventloop) = rumqttc::AsyncClient::new(options_v311(settings), cap);
            (Client::V311(client), EventLoop::V311(Box::new(eventloop)))
        }
        Version::V5 => {
            let (client, eventloop) = rumqttc::v5::AsyncClient::new(options_v5(settings), cap);
            (Client::V5(client), EventLoop::V5(Box::new(eventloop)))
        }
    }
}

/// MQTT 3.1.1: `clean_session = !persistent_session`, manual acks.
pub fn options_v311(settings: Settings) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(settings.client_id, settings.host, settings.port);
    o.set_keep_alive(settings.keep_alive)
        .set_clean_session(!settings.persistent_session)
        .set_manual_acks(true)
        .set_max_packet_size(settings.max_packet_bytes, 65_536);
    if let Some((user, password)) = settings.credentials {
        o.set_credentials(user, password);
    }
    if let Some(transport) = settings.transport {
        o.set_transport(transport);
    }
    o
}

/// MQTT 5: `clean_start = !persistent_session`, the session expiry interval, manual acks.
pub fn options_v5(settings: Settings) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(settings.client_id, settings.host, settings.port);
    o.set_keep_alive(settings.keep_alive)
        .set_clean_start(!settings.persistent_session)
        .set_manual_acks(true)
        .set_session_expiry_interval(Some(settings.session_expiry_s))
        .set_max_packet_size(Some(
            u32::try_from(settings.max_packet_bytes).unwrap_or(u32::MAX),
        ));
    if let Some((user, password)) = settings.credentials {
        o.set_credentials(user, password);
    }
    if let Some(transport) = settings.transport {
        o.set_transport(transport);
    }
    o
}

/// A received publish of either version; kept whole until it is acked.
#[derive(Debug, Clone)]
pub enum Publish {
    V311(rumqttc::Publish),
    /// Boxed: an MQTT 5 publish with its properties is three times the size of a 3.1.1 one.
    V5(Box<mqtt5::Publish>),
}

impl Publish {
    /// The topic name, `None` when an MQTT 5 topic is not UTF-8 (3.1.1 topics are checked by
    /// rumqttc).
    pub fn topic(&self) -> Option<&str> {
        match self {
            Publish::V311(p) => Some(&p.topic),
            Publish::V5(p) => std::str::from_utf8(&p.topic).ok(),
        }
    }

    pub fn payload(&self) -> &[u8] {
        match self {
            Publish::V311(p) => &p.payload,
            Publish::V5(p) => &p.payload,
        }
    }

    /// QoS 0 publishes are never acked nor redelivered.
    pub fn at_most_once(&self) -> bool {
        match self {
            Publish::V311(p) => p.qos == QoS::AtMostOnce,
            Publish::V5(p) => p.qos == QoS5::AtMostOnce,
        }
    }

    /// The MQTT 5 user properties in the order sent (none for 3.1.1).
    pub fn user_properties(&self) -> &[(String, String)] {
        match self {
            Publish::V311(_) => &[],
            Publish::V5(p) => p
                .properties
                .as_ref()
                .map_or(&[], |props| props.user_properties.as_slice()),
        }
    }
}

/// What the source acts on; everything else is [`Event::Other`].
#[derive(Debug)]
pub enum Event {
    ConnAck {
        session_present: bool,
    },
    Publish(Publish),
    /// A SUBACK; `refused` holds the reason codes when it refused at least one filter.
    SubAck {
        refused: Option<String>,
    },
    /// An UNSUBACK (one per UNSUBSCRIBE); `refused` holds the MQTT 5 reason codes when the
    /// broker refused (an absent subscription is not a refusal).
    UnsubAck {
        refused: Option<String>,
    },
    /// A PUBACK (QoS 1) or PUBREC (QoS 2) was written to the socket.
    AckWritten,
    /// Our DISCONNECT was written to the socket.
    DisconnectWritten,
    Other,
}

/// The connection failed; polling again reconnects.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectionError(String);

/// The event loop of either version. Polling drives the connection; acks and requests are
/// written only while it is polled.
pub enum EventLoop {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

impl EventLoop {
    pub async fn poll(&mut self) -> Result<Event, ConnectionError> {
        use rumqttc::v5::Event as E5;
        use rumqttc::{Event as E, Packet};
        match self {
            EventLoop::V311(eventloop) => match eventloop.poll().await {
                Ok(E::Incoming(Packet::ConnAck(c))) => Ok(Event::ConnAck {
                    session_present: c.session_present,
                }),
                Ok(E::Incoming(Packet::Publish(p))) => Ok(Event::Publish(Publish::V311(p))),
                Ok(E::Incoming(Packet::SubAck(s))) => Ok(Event::SubAck {
                    refused: s
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                        .then(|| format!("{:?}", s.return_codes)),
                }),
                // A 3.1.1 UNSUBACK carries no reason: the broker removed the subscription or had
                // none.
                Ok(E::Incoming(Packet::UnsubAck(_))) => Ok(Event::UnsubAck { refused: None }),
                Ok(E::Outgoing(o)) => Ok(outgoing(o)),
                Ok(_) => Ok(Event::Other),
                Err(e) => Err(ConnectionError(e.to_string())),
            },
            EventLoop::V5(eventloop) => match eventloop.poll().await {
                Ok(E5::Incoming(mqtt5::Packet::ConnAck(c))) => Ok(Event::ConnAck {
                    session_present: c.session_present,
                }),
                Ok(E5::Incoming(mqtt5::Packet::Publish(p))) => {
                    Ok(Event::Publish(Publish::V5(Box::new(p))))
                }
                Ok(E5::Incoming(mqtt5::Packet::SubAck(s))) => Ok(Event::SubAck {
                    refused: s
                        .return_codes
                        .iter()
                        .any(|c| !matches!(c, mqtt5::SubscribeReasonCode::Success(_)))
                        .then(|| format!("{:?}", s.return_codes)),
                }),
                Ok(E5::Incoming(mqtt5::Packet::UnsubAck(u))) => Ok(Event::UnsubAck {
                    refused: u
                        .reasons
                        .iter()
                        .any(|r| {
                            !matches!(
                                r,
                                mqtt5::UnsubAckReason::Success
                                    | mqtt5::UnsubAckReason::NoSubscriptionExisted
                            )
                        })
                        .then(|| format!("{:?}", u.reasons)),
                }),
                Ok(E5::Outgoing(o)) => Ok(outgoing(o)),
                Ok(_) => Ok(Event::Other),
                Err(e) => Err(ConnectionError(e.to_string())),
            },
        }
    }
}

fn outgoing(o: Outgoing) -> Event {
    match o {
        Outgoing::PubAck(_) | Outgoing::PubRec(_) => Event::AckWritten,
        Outgoing::Disconnect => Event::DisconnectWritten,
        _ => Event::Other,
    }
}

/// The request side of either version: requests are queued for the event loop, in order.
pub enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// A request could not be queued: the event loop is gone.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(String);

impl Client {
    pub async fn ack(&self, publish: &Publish) -> Result<(), RequestError> {
        match (self, publish) {
            (Client::V311(c), Publish::V311(p)) => c.ack(p).await.map_err(request),
            (Client::V5(c), Publish::V5(p)) => c.ack(p).await.map_err(request),
            // A source builds one version; its publishes are of that version.
            _ => Err(RequestError("publish of the other MQTT version".into())),
        }
    }

    /// Subscribes to `(filter, qos)` pairs in one SUBSCRIBE.
    pub async fn subscribe(&self, filters: &[(String, u8)]) -> Result<(), RequestError> {
        match self {
            Client::V311(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|(f, q)| rumqttc::SubscribeFilter::new(f.clone(), qos(*q))),
                )
                .await
                .map_err(request),
            Client::V5(c) => c
                .subscribe_many(
                    filters
                        .iter()
                        .map(|(f, q)| mqtt5::Filter::new(f.clone(), qos5(*q))),
                )
                .await
                .map_err(request),
        }
    }

    /// Unsubscribes from one filter (one UNSUBSCRIBE, answered by one UNSUBACK).
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), RequestError> {
        match self {
            Client::V311(c) => c.unsubscribe(filter).await.map_err(request),
            Client::V5(c) => c.unsubscribe(filter).await.map_err(request),
        }
    }

    pub async fn disconnect(&self) -> Result<(), RequestError> {
        match self {
            Client::V311(c) => c.disconnect().await.map_err(request),
            Client::V5(c) => c.disconnect().await.map_err(request),
        }
    }
}

fn request(error: impl std::fmt::Display) -> RequestError {
    RequestError(error.to_string())
}

fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn qos5(level: u8) -> QoS5 {
    match level {
        0 => QoS5::AtMostOnce,
        1 => QoS5::AtLeastOnce,
        _ => QoS5::ExactlyOnce,
    }
}

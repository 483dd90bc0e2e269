//! How an ack reaches rumqttc: straight into its request channel from the thread that runs it
//! (the ingest writer's, after the commit), or through the acker when that channel is full,
//! and never out of order.
//!
//! Before issue 18 every ack went through the acker task: the writer's thread woke the acker,
//! which woke the event loop. A broker that allows few unacknowledged messages in flight
//! (Mosquitto's `max_inflight_messages`, default 20) sends the next messages only when those
//! PUBACKs arrive, so each hop lengthened every round of the drain. Now the writer puts the
//! ack into rumqttc's request channel itself ([`Client::try_ack`], which never blocks) and
//! the event loop, woken by the channel, writes it.
//!
//! # Invariants
//!
//! - **Never blocks the writer.** A full request channel (the event loop is not being polled:
//!   a reconnect backoff, a stop) is never waited on by the caller; the ack is queued for the
//!   acker instead, which awaits room as it always did.
//! - **Order.** PUBACKs leave in the order their acks ran (MQTT 3.1.1 section 4.6; commit
//!   order, which is arrival order). Once one ack is queued for the acker (`spilled`), every
//!   later ack queues behind it, until the acker finds its queue empty: it clears `spilled`
//!   under the same lock that [`AckRoute::ack`] holds while it checks the flag and queues, so
//!   no ack can be queued unseen while direct acks resume.
//! - **A stop's DISCONNECT follows every ack.** An ack has left [`AckRoute::ack`] in rumqttc's
//!   channel or in the acker's queue; the stop queues its DISCONNECT through the acker only
//!   after the ledger shows every ack ran ([`super::stop`]), so it is behind both.

use std::sync::{Mutex, PoisonError};

use tokio::sync::mpsc;

use super::session::{Client, Publish};
use super::Command;

/// The ack path of one source, shared by its submissions' acks and its acker.
pub struct AckRoute {
    client: Client,
    commands: mpsc::UnboundedSender<Command>,
    /// Whether acks are waiting in the acker's queue (later acks must queue behind them).
    spilled: Mutex<bool>,
}

impl AckRoute {
    pub(super) fn new(client: Client, commands: mpsc::UnboundedSender<Command>) -> AckRoute {
        AckRoute {
            client,
            commands,
            spilled: Mutex::new(false),
        }
    }

    /// Sends `publish`'s PUBACK (PUBREC for QoS 2) without blocking: into rumqttc's request
    /// channel when it has room and nothing is queued for the acker, else behind the acker's
    /// queue. Returns whether it went to the acker.
    pub fn ack(&self, publish: Publish) -> bool {
        let mut spilled = self.spilled.lock().unwrap_or_else(PoisonError::into_inner);
        if !*spilled {
            // Full, or the event loop is gone: the acker awaits room (or reports the loss).
            match self.client.try_ack(&publish) {
                Ok(()) => return false,
                Err(_) => *spilled = true,
            }
        }
        let _ = self.commands.send(Command::Ack(publish));
        true
    }

    /// The acker's next command: one already queued, or (its queue empty) `None` after
    /// letting acks go straight to rumqttc again.
    pub(super) fn next_queued(
        &self,
        queue: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Option<Command> {
        if let Ok(command) = queue.try_recv() {
            return Some(command);
        }
        let mut spilled = self.spilled.lock().unwrap_or_else(PoisonError::into_inner);
        match queue.try_recv() {
            Ok(command) => Some(command),
            Err(_) => {
                *spilled = false;
                None
            }
        }
    }

    /// The client, for the acker's own requests (subscribe, unsubscribe, disconnect).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[cfg(test)]
mod tests {
    use rumqttc::{QoS, Request};

    use super::*;

    fn publish(pkid: u16) -> Publish {
        let mut p = rumqttc::Publish::new("t", QoS::AtLeastOnce, Vec::new());
        p.pkid = pkid;
        Publish::V311(p)
    }

    /// The packet id of the PUBACK rumqttc's event loop would write next.
    fn written(channel: &flume::Receiver<Request>) -> u16 {
        match channel.try_recv() {
            Ok(Request::PubAck(ack)) => ack.pkid,
            other => panic!("expected a PUBACK, got {other:?}"),
        }
    }

    /// The packet id of the acker's next queued ack.
    fn queued(route: &AckRoute, queue: &mut mpsc::UnboundedReceiver<Command>) -> Option<u16> {
        match route.next_queued(queue) {
            Some(Command::Ack(Publish::V311(p))) => Some(p.pkid),
            Some(_) => panic!("expected an ack"),
            None => None,
        }
    }

    #[test]
    fn an_ack_queued_for_the_acker_keeps_every_later_ack_behind_it() {
        // rumqttc's request channel with room for one request.
        let (requests, channel) = flume::bounded(1);
        let (commands, mut queue) = mpsc::unbounded_channel();
        let client = Client::V311(rumqttc::AsyncClient::from_senders(requests));
        let route = AckRoute::new(client, commands);

        assert!(!route.ack(publish(1)), "room: straight into the channel");
        assert!(route.ack(publish(2)), "full: queued for the acker");
        assert_eq!(written(&channel), 1);
        assert!(
            route.ack(publish(3)),
            "the channel has room again, but ack 2 is still queued: 3 must follow it"
        );
        assert_eq!(queued(&route, &mut queue), Some(2));
        assert_eq!(queued(&route, &mut queue), Some(3));
        assert_eq!(queued(&route, &mut queue), None, "the queue is empty");
        assert!(!route.ack(publish(4)), "nothing queued: straight again");
        assert_eq!(written(&channel), 4);
    }
}

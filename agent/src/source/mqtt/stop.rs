//! How an MQTT source stops: the acks it owes reach the broker before the session ends.
//!
//! A stop (SIGTERM drain, SIGHUP reload, writer gone) used to drop the event loop at once. The
//! writer's last commit often completes just after the cancellation, and its acks, or acks
//! already queued in rumqttc's request channel, then never reached the broker: the broker
//! redelivered those messages to the next session. The dedupe index drops such a copy when its
//! sensor id is unchanged, but after a mapping change it was stored again under the new id.
//!
//! The stop sequence, bounded by one deadline:
//!
//! 1. The poller submits nothing more: publishes still waiting for the writer are dropped, and
//!    publishes arriving now are not submitted. None of them was acked, so the broker
//!    redelivers them to the next session, which is correct.
//! 2. The poller keeps polling the event loop (acks are written only while it is polled) until
//!    the [`AckLedger`] shows no ack owed: every submission handed to the writer has either run
//!    its ack (committed) or been dropped unrun (not committed).
//! 3. It then asks the acker for a DISCONNECT. The acker sends its requests in order and rumqttc
//!    writes and flushes requests in order, so when rumqttc reports the DISCONNECT written,
//!    every PUBACK (PUBREC for QoS 2) before it is on the socket.
//! 4. It waits for the broker to close the connection (an MQTT 3.1.1 broker closes on
//!    DISCONNECT; Mosquitto does at once). TCP delivers in order and the broker reads packets in
//!    order, so the close proves it processed every ack. Closing our socket first could send a
//!    reset while publishes sit unread in our receive buffer, and a reset makes the broker's
//!    kernel discard the acks it has not read yet.
//!
//! If the connection is down, breaks, or the deadline passes, the source stops anyway and says
//! so ("acks not confirmed"): the broker redelivers what it did not see acked, exactly as after
//! a crash (no loss; doubled only under a changed sensor id).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::session::{Event, EventLoop};
use super::Command;

/// How long the broker gets to close the connection after our DISCONNECT was written.
pub const CLOSE_WAIT_MAX: Duration = Duration::from_secs(1);

/// The acks a source owes: one per QoS 1/2 submission from the moment it is built until its
/// ack has run (and handed the publish to the acker) or the submission was dropped unrun.
#[derive(Debug, Default)]
pub struct AckLedger {
    owed: AtomicUsize,
    ran: AtomicU64,
    dropped: AtomicU64,
    changed: Notify,
}

impl AckLedger {
    /// Records one more ack owed; the returned token settles it.
    pub fn owe(self: &Arc<Self>) -> OwedAck {
        self.owed.fetch_add(1, Ordering::AcqRel);
        OwedAck {
            ledger: self.clone(),
            ran: false,
        }
    }

    /// Acks owed now.
    pub fn owed(&self) -> usize {
        self.owed.load(Ordering::Acquire)
    }

    /// Acks that ran (their commit happened) since the ledger was made.
    pub fn ran(&self) -> u64 {
        self.ran.load(Ordering::Relaxed)
    }

    /// Submissions dropped with their ack unrun (not committed) since the ledger was made.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Resolves after the number owed changed (or at once if it changed since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// One ack owed. Settled by [`OwedAck::ran`] after the ack was handed on, or by being dropped
/// unrun (the writer stopped before committing its submission).
#[derive(Debug)]
pub struct OwedAck {
    ledger: Arc<AckLedger>,
    ran: bool,
}

impl OwedAck {
    /// The ack ran. Call it after handing the ack to the acker, so that a stop that sees nothing
    /// owed queues its DISCONNECT behind every ack.
    pub fn ran(mut self) {
        self.ran = true;
        self.ledger.ran.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for OwedAck {
    fn drop(&mut self) {
        if !self.ran {
            self.ledger.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.ledger.owed.fetch_sub(1, Ordering::AcqRel);
        self.ledger.changed.notify_one();
    }
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every ack owed was written before our DISCONNECT, and the broker closed the connection
    /// after reading it (`broker_closed`), or did not within [`CLOSE_WAIT_MAX`].
    Disconnected { broker_closed: bool },
    /// The connection was down when the stop began: nothing could be flushed.
    NotConnected,
    /// The connection broke (or the acker ended) before the DISCONNECT was written.
    ConnectionLost,
    /// The deadline passed with acks still owed (a commit that did not finish) or before the
    /// DISCONNECT was written.
    TimedOut,
}

/// What a stop did, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopReport {
    pub outcome: Outcome,
    /// PUBACKs / PUBRECs rumqttc wrote during the stop.
    pub acks_flushed: u64,
    /// QoS 1/2 publishes that arrived during the stop and were not submitted.
    pub not_submitted: u64,
    /// Acks still owed when the stop ended (0 unless it timed out).
    pub owed: usize,
    pub elapsed: Duration,
}

impl StopReport {
    /// Whether the broker was shown every ack of a committed message before the session ended.
    pub fn acks_confirmed(&self) -> bool {
        matches!(self.outcome, Outcome::Disconnected { .. })
    }
}

/// Steps 2-4 of the module doc, on an event loop whose poller has stopped submitting. Returns
/// when the broker closed the connection, the connection failed or `deadline` passed; the event
/// loop is never polled again after that (polling would reconnect).
pub(super) async fn flush_and_disconnect(
    eventloop: &mut EventLoop,
    commands: &mpsc::UnboundedSender<Command>,
    ledger: &AckLedger,
    connected: bool,
    deadline: Instant,
) -> StopReport {
    let started = Instant::now();
    let mut report = StopReport {
        outcome: Outcome::NotConnected,
        acks_flushed: 0,
        not_submitted: 0,
        owed: 0,
        elapsed: Duration::ZERO,
    };
    let finish = |mut report: StopReport, outcome| {
        report.outcome = outcome;
        report.owed = ledger.owed();
        report.elapsed = started.elapsed();
        report
    };
    if !connected {
        return finish(report, Outcome::NotConnected);
    }
    let mut disconnect_asked = false;
    let mut disconnect_written: Option<Instant> = None;
    loop {
        // One poll future per event, kept across ledger wake-ups: only the deadline drops it.
        let event = {
            let poll = eventloop.poll();
            tokio::pin!(poll);
            loop {
                if !disconnect_asked && ledger.owed() == 0 {
                    disconnect_asked = true;
                    if commands.send(Command::Disconnect).is_err() {
                        // The acker is gone (it only ends when the source does): nothing more
                        // can be written.
                        return finish(report, Outcome::ConnectionLost);
                    }
                }
                let until = match disconnect_written {
                    Some(at) => deadline.min(at + CLOSE_WAIT_MAX),
                    None => deadline,
                };
                tokio::select! {
                    biased;
                    event = &mut poll => break event,
                    _ = ledger.changed(), if !disconnect_asked => {}
                    _ = tokio::time::sleep_until(until) => {
                        let outcome = match disconnect_written {
                            Some(_) => Outcome::Disconnected { broker_closed: false },
                            None => Outcome::TimedOut,
                        };
                        return finish(report, outcome);
                    }
                }
            }
        };
        match event {
            Ok(Event::AckWritten) => report.acks_flushed += 1,
            Ok(Event::DisconnectWritten) => disconnect_written = Some(Instant::now()),
            Ok(Event::Publish(p)) if !p.at_most_once() => {
                report.not_submitted += 1;
            }
            Ok(_) => {}
            Err(_) => {
                let outcome = match disconnect_written {
                    Some(_) => Outcome::Disconnected {
                        broker_closed: true,
                    },
                    None => Outcome::ConnectionLost,
                };
                return finish(report, outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_is_owed_until_it_runs_or_its_submission_is_dropped() {
        let ledger = Arc::new(AckLedger::default());
        let committed = ledger.owe();
        let uncommitted = ledger.owe();
        assert_eq!(ledger.owed(), 2);
        committed.ran();
        assert_eq!((ledger.owed(), ledger.ran(), ledger.dropped()), (1, 1, 0));
        drop(uncommitted);
        assert_eq!((ledger.owed(), ledger.ran(), ledger.dropped()), (0, 1, 1));
    }

    #[test]
    fn an_ack_inside_a_dropped_closure_is_settled_as_dropped() {
        let ledger = Arc::new(AckLedger::default());
        let owed = ledger.owe();
        let ack: Box<dyn FnOnce() + Send> = Box::new(move || owed.ran());
        assert_eq!(ledger.owed(), 1);
        drop(ack);
        assert_eq!((ledger.owed(), ledger.ran(), ledger.dropped()), (0, 0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_settled_ack_wakes_a_stop_waiting_on_the_ledger() {
        let ledger = Arc::new(AckLedger::default());
        let owed = ledger.owe();
        let waiter = {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                while ledger.owed() > 0 {
                    ledger.changed().await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        owed.ran();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("woken")
            .expect("waiter");
    }
}

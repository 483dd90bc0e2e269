//! The serial transport end to end over a pty pair, in process: the test plays the agent with
//! `runner::peer::Peer` (decode, deduplicate by (device, boot, seq), cumulative acks) and checks
//! the ledger against what arrived.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use edge_protocol::link::{self, Frame, TimeSync};
use firmware_sim::runner::ledger::unix_ms_now;
use firmware_sim::runner::peer::Peer;
use firmware_sim::runner::serial::{self, SerialConfig};
use firmware_sim::runner::{Ledger, LedgerRecord, RunConfig, RunSummary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;

fn ledger_path(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("{name}-{}-{nanos}.jsonl", std::process::id()))
}

/// Runs the simulator on a pty master while a peer answers on the slave; returns what each saw.
async fn run_against_peer(
    config: RunConfig,
    serial: SerialConfig,
) -> (RunSummary, Peer, Vec<LedgerRecord>) {
    let (summary, peer, records, _) = run_against_syncing_peer(config, serial, None).await;
    (summary, peer, records)
}

/// [`run_against_peer`] with a peer that also sends a `TimeSync` (host clock) every
/// `sync_every`, as the agent does; also returns when each accepted frame arrived (host unix ms,
/// in `peer.accepted` order).
async fn run_against_syncing_peer(
    config: RunConfig,
    serial: SerialConfig,
    sync_every: Option<Duration>,
) -> (RunSummary, Peer, Vec<LedgerRecord>, Vec<u64>) {
    let (master, slave) = SerialStream::pair().expect("a pty pair");
    let stop = CancellationToken::new();
    let peer_stop = stop.clone();
    let peer = tokio::spawn(async move {
        let (mut rx, mut tx) = tokio::io::split(slave);
        let mut peer = Peer::new();
        let mut arrivals = Vec::new();
        let mut buf = [0u8; 4096];
        let period = sync_every.unwrap_or(Duration::from_secs(3_600));
        let mut sync = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            let n = tokio::select! {
                n = rx.read(&mut buf) => n.expect("read the pty"),
                _ = sync.tick(), if sync_every.is_some() => {
                    let frame = Frame::TimeSync(TimeSync { unix_ms: unix_ms_now() });
                    let bytes = link::encode_to_vec(&frame).expect("a TimeSync encodes");
                    tx.write_all(&bytes).await.expect("write the pty");
                    continue;
                }
                () = peer_stop.cancelled() => return (peer, arrivals),
            };
            let reply = peer.feed(&buf[..n]);
            arrivals.resize(peer.accepted.len(), unix_ms_now());
            if !reply.is_empty() {
                tx.write_all(&reply).await.expect("write the pty");
            }
        }
    });
    let summary = serial::run_on(master, &config, &serial, None, CancellationToken::new())
        .await
        .expect("the run succeeds");
    stop.cancel();
    let (peer, arrivals) = peer.await.expect("the peer task");
    let path = config.ledger.as_ref().expect("a ledger path");
    let records = Ledger::read(path).expect("read the ledger");
    let _ = std::fs::remove_file(path);
    (summary, peer, records, arrivals)
}

/// What the ledger says about each reading, and the accounting check every test shares:
/// every ledger reading arrived exactly once, unless its frame was evicted or lost in a reboot
/// (then at most once); nothing arrived that the ledger lacks. Returns (readings, unaccounted
/// readings that did not arrive, readings evicted).
fn account(records: &[LedgerRecord], peer: &Peer) -> (usize, usize, u64) {
    let mut evicted: HashSet<(u32, u32, u32)> = HashSet::new();
    let mut evicted_readings = 0u64;
    let mut lost: HashSet<(u32, u32, u32)> = HashSet::new();
    for r in records {
        match r {
            LedgerRecord::Evicted {
                device,
                boot_id,
                seq,
                readings,
            } => {
                evicted.insert((*device, *boot_id, *seq));
                evicted_readings += u64::from(*readings);
            }
            LedgerRecord::Reboot {
                device,
                old_boot_id,
                lost: seqs,
                ..
            } => {
                lost.extend(seqs.iter().map(|s| (*device, *old_boot_id, *s)));
            }
            _ => {}
        }
    }
    let mut arrived: HashMap<(u32, u8, u64), usize> = HashMap::new();
    for a in &peer.accepted {
        for r in &a.readings {
            *arrived
                .entry((a.device_id, r.channel, r.ts_ms))
                .or_default() += 1;
        }
    }
    let mut in_ledger = HashSet::new();
    let mut total = 0;
    let mut missing = 0;
    for r in records {
        let LedgerRecord::Frame {
            device,
            boot_id,
            seq,
            readings,
            ..
        } = r
        else {
            continue;
        };
        for x in readings {
            total += 1;
            let key = (*device, x.channel, x.ts_ms);
            assert!(
                in_ledger.insert(key),
                "identity {key:?} appears twice in the ledger"
            );
            let n = arrived.get(&key).copied().unwrap_or(0);
            let excused = evicted.contains(&(*device, *boot_id, *seq))
                || lost.contains(&(*device, *boot_id, *seq));
            if excused {
                assert!(
                    n <= 1,
                    "{key:?} (frame {seq}, evicted or lost) arrived {n} times"
                );
            } else {
                assert_eq!(
                    n, 1,
                    "{key:?} (device {device} boot {boot_id:#x} frame {seq}) arrived {n} times"
                );
            }
            if n == 0 {
                missing += 1;
            }
        }
    }
    for key in arrived.keys() {
        assert!(
            in_ledger.contains(key),
            "{key:?} arrived but is not in the ledger"
        );
    }
    (total, missing, evicted_readings)
}

fn serial_config() -> SerialConfig {
    SerialConfig {
        retransmit_ms: 100,
        max_backoff_ms: 400,
        flush_ms: 50,
        ..SerialConfig::pty()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bytes_duplicates_and_reordering_still_deliver_every_ledger_reading_exactly_once() {
    let mut config = RunConfig::new(3, 500.0, 21);
    config.channels = 2;
    config.count = Some(1_000);
    config.ledger = Some(ledger_path("fwsim-serial-faults"));
    config.faults.corrupt_rate = 0.001;
    config.faults.duplicate_rate = 0.1;
    config.faults.reorder_rate = 0.05;
    let (summary, peer, records) = run_against_peer(config, serial_config()).await;

    assert!(summary.drained, "every frame was acknowledged: {summary:?}");
    assert_eq!(summary.readings, 3_000);
    let (total, missing, evicted) = account(&records, &peer);
    assert_eq!(total, 3_000, "every sampled reading is in a sealed frame");
    assert_eq!(
        (missing, evicted),
        (0, 0),
        "nothing overflowed, so nothing is missing"
    );
    assert!(peer.errors > 0, "corruption was exercised");
    assert!(peer.duplicates > 0, "duplicates were exercised");
    assert!(
        summary.retransmits > 0,
        "corrupted frames were retransmitted"
    );
    assert!(matches!(
        records.last(),
        Some(LedgerRecord::End { clean: true, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_line_overflows_the_ring_and_every_lost_reading_is_counted_in_dropped() {
    let mut config = RunConfig::new(2, 2_000.0, 22);
    config.channels = 4;
    config.count = Some(6_000);
    config.ledger = Some(ledger_path("fwsim-serial-overflow"));
    config.faults.disconnect_every = 1.0;
    config.faults.disconnect_secs = 0.8;
    let (summary, peer, records) = run_against_peer(config, serial_config()).await;

    assert!(summary.drained, "{summary:?}");
    let (total, missing, evicted) = account(&records, &peer);
    assert_eq!(total, 12_000);
    assert!(evicted > 0, "the ring overflowed while the line was cut");
    assert_eq!(evicted, summary.evicted_readings);
    assert!(
        missing as u64 <= evicted,
        "only evicted readings are missing"
    );
    // `dropped` is a running total per boot: the highest one the agent saw is the boot's total.
    let mut totals: HashMap<(u32, u32), u32> = HashMap::new();
    for a in &peer.accepted {
        let t = totals.entry((a.device_id, a.boot_id)).or_default();
        *t = (*t).max(a.dropped);
    }
    let reported: u64 = totals.values().map(|&d| u64::from(d)).sum();
    assert_eq!(
        reported, evicted,
        "the devices' dropped totals add up to what was evicted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebooted_devices_start_a_new_boot_and_lose_only_what_they_held() {
    let mut config = RunConfig::new(2, 400.0, 23);
    config.count = Some(1_000);
    config.ledger = Some(ledger_path("fwsim-serial-reboot"));
    config.faults.reboot_every = 0.4;
    let (summary, peer, records) = run_against_peer(config, serial_config()).await;

    assert!(summary.drained, "{summary:?}");
    let boots: Vec<(u32, u32)> = records
        .iter()
        .filter_map(|r| match r {
            LedgerRecord::Hello {
                device, boot_id, ..
            } => Some((*device, *boot_id)),
            _ => None,
        })
        .collect();
    assert!(boots.len() >= 5, "reboots happened: {boots:?}");
    let unique: HashSet<_> = boots.iter().collect();
    assert_eq!(unique.len(), boots.len(), "every boot has a new boot id");
    for boot in &boots {
        assert!(
            peer.hellos.contains(boot),
            "the agent saw Hello for {boot:?}"
        );
    }
    let (total, missing, _) = account(&records, &peer);
    assert!(total > 0 && missing < total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_clocks_and_reboots_keep_every_reading_identity_unique_and_increasing() {
    let mut config = RunConfig::new(3, 300.0, 24);
    config.channels = 3;
    config.count = Some(600);
    config.ledger = Some(ledger_path("fwsim-serial-skew"));
    config.faults.clock_skew_ms = 60_000;
    config.faults.reboot_every = 0.7;
    let (summary, _peer, records) = run_against_peer(config, serial_config()).await;
    assert!(summary.drained, "{summary:?}");

    // Before its boot's TimeSync a device stamps its own clock (small numbers), after it unix
    // milliseconds: each kind strictly increases per channel over the whole run.
    let host_ms = firmware_sim::runner::ledger::unix_ms_now();
    let mut last: HashMap<(u32, u8, bool), u64> = HashMap::new();
    let mut skewed = 0;
    for r in &records {
        let LedgerRecord::Frame {
            device, readings, ..
        } = r
        else {
            continue;
        };
        for x in readings {
            let unix = x.ts_ms > 1_000_000_000_000;
            if let Some(prev) = last.insert((*device, x.channel, unix), x.ts_ms) {
                assert!(
                    x.ts_ms > prev,
                    "device {device} channel {} went from {prev} to {}",
                    x.channel,
                    x.ts_ms
                );
            }
            if x.ts_ms > 1_000_000_000_000 && host_ms.abs_diff(x.ts_ms) > 1_000 {
                skewed += 1;
            }
        }
    }
    assert!(skewed > 0, "some device's clock is visibly off");
}

/// Every channel's unix and uptime stamps strictly increase over the run (reboots included).
fn assert_stamps_increase(records: &[LedgerRecord]) {
    let mut last: HashMap<(u32, u8, bool), u64> = HashMap::new();
    for r in records {
        let LedgerRecord::Frame {
            device, readings, ..
        } = r
        else {
            continue;
        };
        for x in readings {
            let unix = x.ts_ms > 1_000_000_000_000;
            if let Some(prev) = last.insert((*device, x.channel, unix), x.ts_ms) {
                assert!(
                    x.ts_ms > prev,
                    "device {device} ch {}: {prev} then {}",
                    x.channel,
                    x.ts_ms
                );
            }
        }
    }
}

/// The newest unix stamp of each accepted frame minus its arrival (host ms): how far the
/// device clocks were off, link and flush delays included.
fn offsets(peer: &Peer, arrivals: &[u64]) -> Vec<i64> {
    let frames = peer.accepted.iter().zip(arrivals);
    frames
        .filter_map(|(a, at)| {
            let newest = a
                .readings
                .iter()
                .map(|r| r.ts_ms)
                .filter(|t| *t > 1_000_000_000_000)
                .max()?;
            Some(newest as i64 - *at as i64)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifting_clocks_resynced_every_200_ms_stay_near_the_host_and_keep_identities_unique() {
    // 10% fast: 20 ms gained per sync period; 300 ms over the run without the periodic syncs.
    let mut config = RunConfig::new(3, 200.0, 26);
    config.channels = 2;
    config.count = Some(600);
    config.ledger = Some(ledger_path("fwsim-serial-drift"));
    config.faults.clock_drift_ppm = 100_000;
    config.faults.reboot_every = 0.8;
    let every = Some(Duration::from_millis(200));
    let (summary, peer, records, arrivals) =
        run_against_syncing_peer(config, serial_config(), every).await;
    assert!(summary.drained, "{summary:?}");
    account(&records, &peer);
    assert_stamps_increase(&records);
    let offsets = offsets(&peer, &arrivals);
    let worst = offsets.iter().map(|o| o.abs()).max().unwrap_or(0);
    println!(
        "{} frames; offsets {:?} .. {:?}",
        offsets.len(),
        offsets.iter().min(),
        offsets.iter().max()
    );
    assert!(offsets.len() > 50, "{offsets:?}");
    assert!(
        worst < 100,
        "every frame within 100 ms of the host: {offsets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifting_clocks_synced_only_at_boot_run_away_from_the_host() {
    let mut config = RunConfig::new(2, 200.0, 27);
    config.count = Some(600);
    config.ledger = Some(ledger_path("fwsim-serial-drift-free"));
    config.faults.clock_drift_ppm = 100_000;
    let (summary, peer, records, arrivals) =
        run_against_syncing_peer(config, serial_config(), None).await;
    assert!(summary.drained, "{summary:?}");
    account(&records, &peer);
    assert_stamps_increase(&records);
    let worst = offsets(&peer, &arrivals).into_iter().max().unwrap_or(0);
    assert!(worst > 200, "3 s at 10% fast is 300 ms ahead: {worst}");
}

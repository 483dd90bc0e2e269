//! The Modbus device as a client meets it (tokio-modbus's TCP client against the runner's
//! server): every request the client makes is in the ledger, in order, with the outcome the
//! client saw, and every answer carries the values the ledger says were in force.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use firmware_sim::runner::modbus::{self, ModbusConfig};
use firmware_sim::runner::{Ledger, LedgerRecord, ModbusOutcome};
use tokio_modbus::client::{tcp, Context, Reader};
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;

const CHANNELS: u8 = 3;

/// What the client saw for one request.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Values(Vec<f32>),
    Exception(ExceptionCode),
    NoAnswer,
}

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

async fn connect(addr: SocketAddr, unit: u8) -> Context {
    for _ in 0..100 {
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
            return tcp::attach_slave(stream, Slave(unit));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("firmware-sim modbus did not listen on {addr}");
}

/// One read of `count` holding registers from `address`; a dropped request needs a new
/// connection, so the caller gets a fresh one back.
async fn read(
    client: Context,
    addr: SocketAddr,
    unit: u8,
    address: u16,
    count: u16,
) -> (Seen, Context) {
    let mut client = client;
    let answer = tokio::time::timeout(
        Duration::from_millis(300),
        client.read_holding_registers(address, count),
    )
    .await;
    match answer {
        Ok(Ok(Ok(words))) => {
            let values = words
                .chunks(2)
                .map(|w| f32::from_bits((u32::from(w[0]) << 16) | u32::from(w[1])))
                .collect();
            (Seen::Values(values), client)
        }
        Ok(Ok(Err(code))) => (Seen::Exception(code), client),
        Ok(Err(error)) => panic!("transport error: {error}"),
        Err(_) => (Seen::NoAnswer, connect(addr, unit).await),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_in_the_ledger_with_the_outcome_and_the_values_the_client_saw() {
    let dir = std::env::temp_dir().join(format!("fwsim-modbus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ledger = dir.join("ledger.jsonl");
    let addr = free_addr();
    let mut config = ModbusConfig::tcp(addr);
    config.devices = 2;
    config.channels = CHANNELS;
    config.update_ms = 15;
    config.ledger = Some(ledger.clone());
    config.faults.exception_rate = 0.2;
    config.faults.drop_rate = 0.1;
    config.faults.slow_rate = 0.2;
    config.faults.slow_ms = 30;
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let sim = tokio::spawn(async move { modbus::run(&config, stop).await });

    let mut seen: Vec<(u8, Seen)> = Vec::new();
    for unit in [1u8, 2] {
        let mut client = connect(addr, unit).await;
        for i in 0..60 {
            let (result, next) = read(client, addr, unit, 0, u16::from(CHANNELS) * 2).await;
            seen.push((unit, result));
            client = next;
            if i % 20 == 19 {
                // Past the map: refused, not dropped or busy unless a fault came first.
                let (result, next) = read(client, addr, unit, 5, 2).await;
                client = next;
                seen.push((unit, result));
            }
        }
    }
    // A unit the simulator does not play gets no answer and leaves no trace.
    let (nobody, _) = read(connect(addr, 9).await, addr, 9, 0, 2).await;
    assert_eq!(nobody, Seen::NoAnswer);
    cancel.cancel();
    let summary = sim.await.expect("join").expect("the run succeeds");

    let records = Ledger::read(&ledger).expect("read the ledger");
    let _ = std::fs::remove_dir_all(&dir);
    let mut current: [Vec<f32>; 3] = Default::default();
    let mut replayed: Vec<(u8, Seen)> = Vec::new();
    for record in &records {
        match record {
            LedgerRecord::ModbusValues { device, values, .. } => {
                current[*device as usize] = values.clone();
            }
            LedgerRecord::ModbusRequest {
                device, outcome, ..
            } => {
                let unit = *device as u8;
                let seen = match outcome {
                    ModbusOutcome::Answered => Seen::Values(current[*device as usize].clone()),
                    ModbusOutcome::Busy => Seen::Exception(ExceptionCode::ServerDeviceBusy),
                    ModbusOutcome::Refused => Seen::Exception(ExceptionCode::IllegalDataAddress),
                    ModbusOutcome::Dropped => Seen::NoAnswer,
                };
                replayed.push((unit, seen));
            }
            _ => {}
        }
    }
    assert_eq!(replayed, seen, "the ledger replays what the client saw");
    let count = |f: fn(&Seen) -> bool| seen.iter().filter(|(_, s)| f(s)).count();
    assert!(count(|s| matches!(s, Seen::Values(_))) >= 50);
    assert!(count(|s| *s == Seen::Exception(ExceptionCode::ServerDeviceBusy)) >= 5);
    assert!(count(|s| *s == Seen::Exception(ExceptionCode::IllegalDataAddress)) >= 1);
    assert!(count(|s| *s == Seen::NoAnswer) >= 3);
    assert!(matches!(
        records.last(),
        Some(LedgerRecord::End { clean: true, .. })
    ));
    assert_eq!(
        summary.frames as usize,
        count(|s| matches!(s, Seen::Values(_)))
    );
}

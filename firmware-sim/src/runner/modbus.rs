//! The Modbus transport: simulated devices answering reads over Modbus TCP or Modbus RTU
//! (tokio-modbus's servers).
//!
//! ```text
//! firmware-sim modbus --tcp 127.0.0.1:0 --devices 100 --channels 50 --register-type u16
//! firmware-sim modbus --serial /dev/pts/7 --first-unit 3 --channels 4 --ledger modbus.jsonl
//! ```
//!
//! The devices are unit ids `--first-unit ..` (`--devices` of them, all below 248) behind one
//! server: over TCP one listener (every connection may ask any unit), over RTU one serial line
//! opened 8N1 at `--baud` (a pty refuses parity bits). A request for another unit gets no
//! answer, as on an RS-485 bus. Register map, encodings and faults: [`super::modbus_device`].
//!
//! Once the server listens, the first line on stdout is `MODBUS_TCP=<address>` (the bound
//! address, so `--tcp 127.0.0.1:0` picks a free port) or `MODBUS_RTU=<path>`.
//!
//! # Values over time
//!
//! Every `--update-ms` all devices sample all their channels ([`super::models`], time in
//! seconds since start) and install the new values; the ledger ([`super::ledger`]) records each
//! installation (`modbus_values`) and each request (`modbus_request`) with the host's Unix
//! milliseconds. One lock holds every device's registers, its fault stream and the ledger, so
//! the ledger's order is the order in which requests saw values: a request answered after a
//! `modbus_values` record saw those values or newer ones, never older ones.
//!
//! A request's answer is taken when the request arrives; a slow answer (fault) is held back
//! `--slow-ms` after that, with the values of its arrival.
//!
//! The run lasts `--duration` seconds or until its cancellation token fires; then the server
//! stops (open connections are closed), and the ledger gets its `end` record.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use super::ledger::{unix_ms_now, Ledger, LedgerError, LedgerRecord, ModbusOutcome};
use super::modbus_device::{DeviceRegisters, Fault, ModbusFaultConfig, RegisterType};
use super::models::ModelSpec;
use super::rng::Rng;
use super::{Progress, RunError, RunSummary};

/// Highest unit id a device may have (248..=255 are reserved by the Modbus specification).
const MAX_UNIT: u8 = 247;

/// Modbus device options (command line).
#[derive(Debug, Clone, clap::Args)]
#[command(group = clap::ArgGroup::new("transport").required(true).args(["tcp", "serial"]))]
pub struct ModbusConfig {
    /// Serve Modbus TCP on this address (port 0: any free port, printed on stdout).
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
    /// Serve Modbus RTU on this serial port (for example one end of a socat pty pair).
    #[arg(long)]
    pub serial: Option<PathBuf>,
    /// RTU baud rate (8 data bits, no parity, 1 stop bit).
    #[arg(long, default_value_t = 19_200)]
    pub baud: u32,
    /// Number of simulated devices (unit ids).
    #[arg(long, default_value_t = 1)]
    pub devices: u8,
    /// Unit id of the first device; the others count up from it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=247))]
    pub first_unit: u8,
    /// Channels per device (each one value, see --register-type).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=125))]
    pub channels: u8,
    /// How a channel is encoded: f32 (two registers) or u16 (one register).
    #[arg(long, value_enum, default_value_t = RegisterType::F32)]
    pub register_type: RegisterType,
    /// Sensor models, `KIND[:KEY=VALUE]...` (sine, walk, step, counter); channel i uses model
    /// i mod count. Repeat the option for several.
    #[arg(long = "model", default_value = "sine")]
    pub models: Vec<ModelSpec>,
    /// Milliseconds between two updates of every channel's value.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub update_ms: u64,
    /// Stop after this many seconds.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seed for every random choice (models, faults).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the ledger of values and requests (JSON lines) to this file.
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub progress_secs: f64,
    #[command(flatten)]
    pub faults: ModbusFaultConfig,
}

impl ModbusConfig {
    /// Modbus TCP on `addr` with defaults (one device, four f32 sine channels, no faults).
    pub fn tcp(addr: SocketAddr) -> ModbusConfig {
        ModbusConfig {
            tcp: Some(addr),
            serial: None,
            baud: 19_200,
            devices: 1,
            first_unit: 1,
            channels: 4,
            register_type: RegisterType::F32,
            models: vec![ModelSpec::Sine {
                offset: 20.0,
                amplitude: 5.0,
                period_s: 60.0,
                noise: 0.2,
            }],
            update_ms: 100,
            duration: None,
            seed: 1,
            ledger: None,
            progress_secs: 0.0,
            faults: ModbusFaultConfig::default(),
        }
    }

    /// The unit ids served, or why they do not fit below 248.
    fn units(&self) -> Result<std::ops::RangeInclusive<u8>, RunError> {
        let last = u16::from(self.first_unit) + u16::from(self.devices);
        match (self.devices, u8::try_from(last - 1)) {
            (1.., Ok(last)) if last <= MAX_UNIT => Ok(self.first_unit..=last),
            _ => Err(RunError::ModbusUnits {
                first: self.first_unit,
                devices: self.devices,
            }),
        }
    }
}

/// What the devices did (the `end` record and the summary).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    values: u64,
    answered: u64,
    busy: u64,
    refused: u64,
    dropped: u64,
    slow: u64,
}

struct Device {
    registers: DeviceRegisters,
    faults: Rng,
}

struct State {
    devices: Vec<Device>,
    ledger: Ledger,
    /// The first ledger write that failed: the run reports it at the end.
    ledger_error: Option<LedgerError>,
    counts: Counts,
}

impl State {
    fn record(&mut self, record: &LedgerRecord) {
        if self.ledger_error.is_none() {
            self.ledger_error = self.ledger.write(record).err();
        }
    }

    /// Samples every device at `t_s` and records the values it installed.
    fn update(&mut self, first_unit: u8, t_s: f64) {
        let mut records = Vec::with_capacity(self.devices.len());
        let unix_ms = unix_ms_now();
        for (unit, device) in (u32::from(first_unit)..).zip(&mut self.devices) {
            device.registers.update(t_s);
            records.push(LedgerRecord::ModbusValues {
                device: unit,
                unix_ms,
                values: device.registers.values().to_vec(),
            });
            self.counts.values += device.registers.values().len() as u64;
        }
        for record in &records {
            self.record(record);
        }
    }
}

/// The devices behind a server: the [`Service`] every connection (or the serial line) calls.
#[derive(Clone)]
struct Devices {
    state: Arc<Mutex<State>>,
    first_unit: u8,
    faults: ModbusFaultConfig,
}

type Answer = Result<Option<Response>, ExceptionCode>;

impl Devices {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock left whole values behind (each update installs a
        // device at a time): keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer to `request` and how long to hold it back, with the ledger record written.
    fn take(&self, request: &SlaveRequest<'_>) -> (Answer, u64) {
        let mut state = self.lock();
        let Some(index) = request
            .slave
            .checked_sub(self.first_unit)
            .map(usize::from)
            .filter(|i| *i < state.devices.len())
        else {
            return (Ok(None), 0);
        };
        let device = &mut state.devices[index];
        let fault = self.faults.draw(&mut device.faults);
        let (outcome, answer) = match fault {
            Fault::Dropped => (ModbusOutcome::Dropped, Ok(None)),
            Fault::Exception => (ModbusOutcome::Busy, Err(ExceptionCode::ServerDeviceBusy)),
            Fault::None | Fault::Slow => match device.registers.answer(&request.request) {
                Ok(response) => (ModbusOutcome::Answered, Ok(Some(response))),
                Err(code) => (ModbusOutcome::Refused, Err(code)),
            },
        };
        let delay_ms = if fault == Fault::Slow {
            self.faults.slow_ms
        } else {
            0
        };
        let counts = &mut state.counts;
        match outcome {
            ModbusOutcome::Answered => counts.answered += 1,
            ModbusOutcome::Busy => counts.busy += 1,
            ModbusOutcome::Refused => counts.refused += 1,
            ModbusOutcome::Dropped => counts.dropped += 1,
        }
        if delay_ms > 0 && outcome != ModbusOutcome::Dropped {
            counts.slow += 1;
        }
        state.record(&LedgerRecord::ModbusRequest {
            device: u32::from(request.slave),
            unix_ms: unix_ms_now(),
            outcome,
            delay_ms,
        });
        (answer, delay_ms)
    }
}

impl Service for Devices {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn std::future::Future<Output = Answer> + Send>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let (answer, delay_ms) = self.take(&request);
        Box::pin(async move {
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            answer
        })
    }
}

/// Runs the devices until `--duration` or `cancel` (see the module doc).
pub async fn run(config: &ModbusConfig, cancel: CancellationToken) -> Result<RunSummary, RunError> {
    let units = config.units()?;
    let mut ledger = match &config.ledger {
        Some(path) => Ledger::create(path)?,
        None => Ledger::disabled(),
    };
    ledger.write(&LedgerRecord::Start {
        transport: if config.tcp.is_some() {
            "modbus-tcp"
        } else {
            "modbus-rtu"
        }
        .to_owned(),
        seed: config.seed,
        devices: u32::from(config.devices),
        channels: config.channels,
        unix_ms: unix_ms_now(),
    })?;
    let devices = units
        .map(|unit| Device {
            registers: DeviceRegisters::new(
                &config.models,
                config.channels,
                config.register_type,
                Rng::new(config.seed, u64::from(unit)),
            ),
            faults: Rng::new(config.seed, 0x1_0000 + u64::from(unit)),
        })
        .collect();
    let start = Instant::now();
    let mut state = State {
        devices,
        ledger,
        ledger_error: None,
        counts: Counts::default(),
    };
    state.update(config.first_unit, 0.0);
    let service = Devices {
        state: Arc::new(Mutex::new(state)),
        first_unit: config.first_unit,
        faults: config.faults.clone(),
    };

    let stop = cancel.child_token();
    let server = spawn_server(config, service.clone(), stop.clone()).await?;
    let ended_by_server = update_until_stopped(config, &service, start, &stop, &server).await;
    stop.cancel();
    let served = server.await;

    let mut state = service.lock();
    let counts = state.counts;
    let clean = !ended_by_server && matches!(served, Ok(Ok(())));
    state.record(&LedgerRecord::End {
        readings: counts.values,
        frames: counts.answered,
        retransmits: 0,
        evicted_readings: 0,
        unix_ms: unix_ms_now(),
        clean,
    });
    if let Some(error) = state.ledger_error.take() {
        return Err(error.into());
    }
    state.ledger.flush()?;
    drop(state);
    eprintln!(
        "firmware-sim modbus: values={} answered={} busy={} refused={} dropped={} slow={}",
        counts.values, counts.answered, counts.busy, counts.refused, counts.dropped, counts.slow
    );
    match served {
        Ok(result) => result?,
        Err(join) => return Err(RunError::ModbusServer(std::io::Error::other(join))),
    }
    Ok(RunSummary {
        readings: counts.values,
        frames: counts.answered,
        acked: 0,
        retransmits: 0,
        evicted_readings: 0,
        drained: true,
    })
}

/// Updates the values every `--update-ms` until stopped, the duration is over or the server
/// ended by itself (then `true`).
async fn update_until_stopped(
    config: &ModbusConfig,
    service: &Devices,
    start: Instant,
    stop: &CancellationToken,
    server: &tokio::task::JoinHandle<Result<(), RunError>>,
) -> bool {
    let deadline = config
        .duration
        .and_then(|d| Duration::try_from_secs_f64(d).ok())
        .map(|d| tokio::time::Instant::from_std(start) + d);
    let mut tick = tokio::time::interval(Duration::from_millis(config.update_ms));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    let mut progress = Progress::new(config.progress_secs);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = async { match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            } } => return false,
            _ = tick.tick() => {}
        }
        if server.is_finished() {
            return true;
        }
        let counts = {
            let mut state = service.lock();
            state.update(config.first_unit, start.elapsed().as_secs_f64());
            state.counts
        };
        progress.maybe_print(|| {
            format!(
                "answered={} busy={} refused={} dropped={} slow={}",
                counts.answered, counts.busy, counts.refused, counts.dropped, counts.slow
            )
        });
    }
}

/// Opens the transport, prints its line on stdout, and serves until `stop`.
async fn spawn_server(
    config: &ModbusConfig,
    service: Devices,
    stop: CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<(), RunError>>, RunError> {
    use std::io::Write as _;
    if let Some(addr) = config.tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::ModbusBind { addr, source })?;
        let bound = listener.local_addr().map_err(RunError::ModbusServer)?;
        println!("MODBUS_TCP={bound}");
        std::io::stdout().flush().map_err(RunError::ModbusServer)?;
        let server = tokio_modbus::server::tcp::Server::new(listener);
        Ok(tokio::spawn(async move {
            let on_connected = |stream: tokio::net::TcpStream, peer: SocketAddr| {
                let service = service.clone();
                async move {
                    // Answers are small and one at a time: do not let Nagle hold them back.
                    let _ = stream.set_nodelay(true);
                    tokio_modbus::server::tcp::accept_tcp_connection(stream, peer, |_| {
                        Ok(Some(service.clone()))
                    })
                }
            };
            let on_error = |error: std::io::Error| {
                tracing::debug!(%error, "Modbus TCP connection ended");
            };
            tokio::select! {
                _ = stop.cancelled() => Ok(()),
                served = server.serve(&on_connected, on_error) => served.map_err(RunError::ModbusServer),
            }
        }))
    } else {
        let path = config.serial.clone().unwrap_or_default();
        let name = path.display().to_string();
        let baud = config.baud;
        let port = open_rtu(&name, baud)?;
        println!("MODBUS_RTU={name}");
        std::io::stdout().flush().map_err(RunError::ModbusServer)?;
        Ok(tokio::spawn(async move {
            let mut port = Some(port);
            loop {
                let server = match port.take() {
                    Some(port) => tokio_modbus::server::rtu::Server::new(port),
                    None => tokio_modbus::server::rtu::Server::new(open_rtu(&name, baud)?),
                };
                let served = tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    served = server.serve_forever(service.clone()) => served,
                };
                // Line noise the decoder gave up on, or the other end closed: a device on a
                // bus keeps listening, so reopen the port.
                if let Err(error) = served {
                    tracing::warn!(%error, port = name, "Modbus RTU line error; reopening the port");
                }
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }))
    }
}

/// Opens an RTU line 8N1.
fn open_rtu(path: &str, baud: u32) -> Result<tokio_serial::SerialStream, RunError> {
    tokio_serial::new(path, baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .open_native_async()
        .map_err(|source| RunError::SerialOpen {
            path: path.to_owned(),
            source,
        })
}

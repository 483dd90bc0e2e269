//! The configuration files the demo writes for its agent and its consumer: the bundled demo
//! configuration, with this run's broker addresses, topic names and paths filled in. They are
//! ordinary files (kept in the run directory) that `edge-agent check-config` accepts.
//!
//! The sensor ids must agree with `account::{mqtt_series, serial_series, modbus_series}`.

use std::net::SocketAddr;
use std::path::Path;

/// This run's names: topics, ids and the MQTT topic root, unique per run so that runs against
/// a long-lived broker (`--kafka`, `--mqtt`) never count each other's records.
#[derive(Debug, Clone)]
pub struct Names {
    pub agent_id: String,
    pub mqtt_root: String,
    pub partials: String,
    pub finals: String,
    pub changelog: String,
    pub consumer_dead_letters: String,
    pub agent_dead_letters: String,
    pub late: String,
    pub readings: String,
    pub progress: String,
    pub consumer_group: String,
}

impl Names {
    pub fn new(run: &str) -> Names {
        let t = |what: &str| format!("edge-demo.{run}.{what}");
        Names {
            agent_id: format!("demo-gw-{run}"),
            mqtt_root: format!("edge-demo/{run}"),
            partials: t("partials"),
            finals: t("finals"),
            changelog: t("consumer-changelog"),
            consumer_dead_letters: t("consumer-dead-letters"),
            agent_dead_letters: t("dead-letters"),
            late: t("late"),
            readings: t("readings"),
            progress: t("progress"),
            consumer_group: t("consumer"),
        }
    }

    /// Every topic the run uses (created up front, so no client waits for another to make one).
    pub fn topics(&self) -> [&str; 8] {
        [
            &self.partials,
            &self.finals,
            &self.changelog,
            &self.consumer_dead_letters,
            &self.agent_dead_letters,
            &self.late,
            &self.readings,
            &self.progress,
        ]
    }
}

/// What the agent's configuration depends on.
pub struct AgentParams<'a> {
    pub names: &'a Names,
    pub data_dir: &'a Path,
    pub mqtt_url: &'a str,
    pub serial_path: &'a str,
    /// The Modbus TCP device (`firmware-sim modbus`): its address and f32 channels.
    pub modbus_tcp: &'a str,
    pub modbus_channels: u8,
    pub kafka: &'a str,
    pub metrics: SocketAddr,
    pub window_ms: u64,
}

/// The agent's TOML: one MQTT source, one serial (link) source, one Modbus TCP device, one
/// tumbling-window pipeline over every sensor, partials to Kafka.
pub fn agent(p: &AgentParams) -> String {
    let n = p.names;
    let modbus_registers: String = (0..u16::from(p.modbus_channels))
        .map(|c| {
            format!(
                "\n[[modbus.block.register]]\nname = \"ch{c}\"\naddress = {}\ntype = \"f32\"\n",
                2 * c
            )
        })
        .collect();
    format!(
        r#"# edge-agent configuration written by the demo (see configs/agent.example.toml for every key).
[agent]
id = "{agent_id}"
data_dir = {data_dir:?}

[buffer]
quota_bytes = 67108864          # 64 MiB for the log, the outbox and the dead letters
on_full = "backpressure"

# Devices publishing JSON {{"ts": <unix ms>, "v": <value>}} to edge-demo/<run>/<device>/<channel>.
[[mqtt]]
name = "plant-broker"
url = "{mqtt_url}"
client_id = "edge-agent-{agent_id}"
keep_alive_s = 5
persistent_session = true       # the broker queues for us while we are down
idempotency = "sensor_ts"       # a redelivery after a crash is recognised by (sensor, ts)
payload = {{ format = "json", value = "/v", timestamp = "/ts" }}
subscribe = [{{ topic = "{root}/+/+", qos = 1 }}]

# Devices on a serial bus speaking the link protocol (protocol/FORMAT.md).
[[serial]]
name = "rs485"
path = "{serial_path}"
baud = 115200
framing = "link"

# A Modbus TCP device (unit 1): each channel an f32 in two holding registers, polled twice a second.
[[modbus]]
name = "plc"
tcp = "{modbus_tcp}"
unit = 1
timeout_ms = 1000

[[modbus.block]]
kind = "holding"
address = 0
count = {modbus_count}
period_ms = 500
{modbus_registers}
[[sensor]]
source = "plant-broker"
topic = "{root}/{{device}}/{{channel}}"
id = "mqtt.dev{{device}}.ch{{channel}}"

[[sensor]]
source = "rs485"
id = "serial.dev{{device}}.ch{{channel}}"

[[sensor]]
source = "plc"
id = "modbus.dev1.{{register}}"

[[pipeline]]
name = "all"
sensors = ["*"]
[pipeline.window]
kind = "tumbling"
size_ms = {window_ms}
allowed_lateness_ms = 1000
idle_timeout_ms = 3000          # a series that stops sending has its last window closed 3 s later
late = "forward"
revisions = true

[ops]
metrics = true
metrics_listen = "{metrics}"
shutdown_timeout_s = 20

[kafka]
bootstrap_servers = "{kafka}"
create_topics = false           # the demo made them
transaction_timeout_ms = 10000

[kafka.topics]
partials = "{partials}"
readings = "{readings}"
late = "{late}"
dead_letters = "{dead}"
progress = "{progress}"
"#,
        agent_id = n.agent_id,
        data_dir = p.data_dir.display().to_string(),
        mqtt_url = p.mqtt_url,
        root = n.mqtt_root,
        serial_path = p.serial_path,
        modbus_tcp = p.modbus_tcp,
        modbus_count = 2 * u16::from(p.modbus_channels),
        window_ms = p.window_ms,
        metrics = p.metrics,
        kafka = p.kafka,
        partials = n.partials,
        readings = n.readings,
        late = n.late,
        dead = n.agent_dead_letters,
        progress = n.progress,
    )
}

/// The consumer's TOML: one instance of a group merging this run's partials.
pub fn consumer(names: &Names, kafka: &str, metrics: SocketAddr) -> String {
    format!(
        r#"# edge-consumer configuration written by the demo (see configs/consumer.example.toml).
[kafka]
bootstrap_servers = "{kafka}"
group_id = "{group}"
instance_id = "demo-consumer-1"
transaction_timeout_ms = 10000

[kafka.client]
"session.timeout.ms" = "10000"
"heartbeat.interval.ms" = "1000"

[topics]
inputs = ["{partials}"]
finals = "{finals}"
changelog = "{changelog}"
dead_letters = "{dead}"
create = false

[grouping]
unmatched = "series"

[window]
idle_timeout_ms = 4000          # a source silent this long no longer holds windows open

[revisions]
enabled = true
horizon_ms = 3600000

[limits]
batch_max_ms = 200

[ops]
metrics = true
metrics_listen = "{metrics}"
"#,
        group = names.consumer_group,
        partials = names.partials,
        finals = names.finals,
        changelog = names.changelog,
        dead = names.consumer_dead_letters,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::{modbus_series, mqtt_series, serial_series};
    use edge_agent::mapping::{Mapper, Origin};
    use edge_agent::source::payload::RawReading;

    fn agent_config(dir: &Path, names: &Names) -> edge_agent::config::Config {
        let path = dir.join("agent.toml");
        let text = agent(&AgentParams {
            names,
            data_dir: &dir.join("data"),
            mqtt_url: "mqtt://127.0.0.1:18860",
            serial_path: "/dev/pts/9",
            modbus_tcp: "127.0.0.1:15020",
            modbus_channels: 2,
            kafka: "127.0.0.1:19692",
            metrics: "127.0.0.1:9999".parse().unwrap(),
            window_ms: 5000,
        });
        std::fs::write(&path, text).unwrap();
        edge_agent::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_agent_accepts_its_configuration_and_maps_to_the_accounted_ids() {
        let dir = tempfile::tempdir().unwrap();
        let names = Names::new("42");
        let mapper = Mapper::new(&agent_config(dir.path(), &names));
        let raw = RawReading {
            sensor: None,
            ts_ms: Some(1_700_000_000_000),
            value: 1.5,
            seq: None,
        };
        let topic = format!("{}/3/1", names.mqtt_root);
        let mqtt = mapper
            .map("plant-broker", Origin::topic(&topic), &raw, 0)
            .unwrap();
        assert_eq!(mqtt.sensor, mqtt_series(3, 1));
        let device = Origin::Device {
            device: 101,
            channel: 0,
        };
        let serial = mapper.map("rs485", device, &raw, 0).unwrap();
        assert_eq!(serial.sensor, serial_series(101, 0));
        let modbus = mapper.map("plc", Origin::Register("ch1"), &raw, 0).unwrap();
        assert_eq!(modbus.sensor, modbus_series(1, 1));
    }

    #[test]
    fn the_consumer_accepts_its_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consumer.toml");
        std::fs::write(
            &path,
            consumer(
                &Names::new("42"),
                "127.0.0.1:19692",
                "127.0.0.1:9999".parse().unwrap(),
            ),
        )
        .unwrap();
        edge_consumer::config::Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn names_are_unique_per_run_and_cover_every_topic() {
        let a = Names::new("1");
        let b = Names::new("2");
        assert_ne!(a.partials, b.partials);
        let mut topics = a.topics().to_vec();
        topics.sort();
        topics.dedup();
        assert_eq!(topics.len(), 8);
    }
}

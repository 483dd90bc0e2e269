//! Pieces of agent configuration (TOML) the suites and the agent's benchmark programs write.

/// An `[[mqtt]]` source `broker` on `url` subscribed to `<root>/+/v` at QoS 1 with JSON payloads
/// (`{"v":..,"ts":..}`), and the `[[sensor]]` that maps `<root>/{dev}/v` to the sensor id
/// `id_template` (e.g. `{dev}`). `tls` goes before the payload line (`ca_file = "..."` and a
/// newline), or is empty. Ends with a newline.
pub fn mqtt_json_source(
    url: &str,
    client_id: &str,
    root: &str,
    id_template: &str,
    tls: &str,
) -> String {
    format!(
        r#"[[mqtt]]
name = "broker"
url = "{url}"
client_id = "{client_id}"
keep_alive_s = 5
{tls}payload = {{ format = "json", value = "/v", timestamp = "/ts" }}
subscribe = [{{ topic = "{root}/+/v", qos = 1 }}]

[[sensor]]
source = "broker"
topic = "{root}/{{dev}}/v"
id = "{id_template}"
"#
    )
}

/// The agent's `[kafka.topics]` table: readings to `readings`, the other record kinds to
/// `<prefix>.partials`, `<prefix>.late` and `<prefix>.dead`, forwarding progress to `progress`.
/// Ends with a newline.
pub fn kafka_topics(readings: &str, prefix: &str, progress: &str) -> String {
    format!(
        r#"[kafka.topics]
readings = "{readings}"
partials = "{prefix}.partials"
late = "{prefix}.late"
dead_letters = "{prefix}.dead"
progress = "{progress}"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_is_the_text_the_suites_wrote_by_hand() {
        assert_eq!(
            mqtt_json_source("mqtt://h:1", "c", "r", "{dev}", "ca_file = \"x\"\n"),
            "[[mqtt]]\nname = \"broker\"\nurl = \"mqtt://h:1\"\nclient_id = \"c\"\nkeep_alive_s = 5\n\
             ca_file = \"x\"\npayload = { format = \"json\", value = \"/v\", timestamp = \"/ts\" }\n\
             subscribe = [{ topic = \"r/+/v\", qos = 1 }]\n\n[[sensor]]\nsource = \"broker\"\n\
             topic = \"r/{dev}/v\"\nid = \"{dev}\"\n"
        );
    }

    #[test]
    fn the_topics_table_is_the_text_the_suites_wrote_by_hand() {
        assert_eq!(
            kafka_topics("t", "p", "p.progress"),
            "[kafka.topics]\nreadings = \"t\"\npartials = \"p.partials\"\nlate = \"p.late\"\n\
             dead_letters = \"p.dead\"\nprogress = \"p.progress\"\n"
        );
    }
}

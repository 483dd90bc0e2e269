//! `edge-agent check-config FILE`: exit 0 for a good file, 1 with file, line and field for a bad
//! one, without starting anything.

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> (i32, String, String) {
    check_with(&["--no-environment"], path)
}

fn check_with(flags: &[&str], path: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .arg("check-config")
        .args(flags)
        .arg(path)
        .output()
        .expect("run edge-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/agent.example.toml")
}

#[test]
fn the_example_configuration_checks_out_with_exit_0() {
    let (code, stdout, _) = check(&example());
    assert_eq!(code, 0);
    assert!(stdout.contains(": ok"), "{stdout}");
}

#[test]
fn a_bad_configuration_exits_1_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example()).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("on_full = "))
        .unwrap()
        + 1;
    std::fs::write(
        &bad,
        text.replace("on_full = \"backpressure\"", "on_full = \"panic\""),
    )
    .unwrap();
    let (code, _, stderr) = check(&bad);
    assert_eq!(code, 1);
    let place = format!("bad.toml:{line}:");
    assert!(stderr.contains(&place), "{stderr}");
    assert!(
        stderr.contains("field `on_full`") && stderr.contains("drop_oldest"),
        "{stderr}"
    );
}

#[test]
fn a_missing_file_exits_1() {
    let (code, _, stderr) = check(Path::new("/nonexistent/agent.toml"));
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/agent.toml"), "{stderr}");
}

#[test]
fn the_configuration_shown_in_the_readme_checks_out() {
    // The README's Configuration section is what newcomers copy: it must stay valid.
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let block: String = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README has a ```toml block")
        .to_owned();
    assert!(block.contains("[agent]"), "{block}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("readme.toml");
    std::fs::write(&file, block).unwrap();
    let (code, stdout, stderr) = check(&file);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn the_kafka_security_table_shown_in_the_readme_checks_out() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let block = readme
        .split("```toml\n")
        .filter_map(|rest| rest.split("```").next())
        .find(|b| b.starts_with("[kafka.security]"))
        .expect("the README shows a [kafka.security] table");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("readme-security.toml");
    let text = format!(
        "[agent]\nid = \"gw\"\ndata_dir = \"/tmp\"\n[kafka]\nbootstrap_servers = \"h:9093\"\n{block}"
    );
    std::fs::write(&file, text).unwrap();
    let (code, stdout, stderr) = check(&file);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[test]
fn a_bad_modbus_register_type_exits_1_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example()).unwrap();
    let line = text
        .lines()
        .position(|l| l == "type = \"f32\"")
        .expect("the example has a Modbus f32 register")
        + 1;
    std::fs::write(&bad, text.replacen("type = \"f32\"", "type = \"bool\"", 1)).unwrap();
    let (code, _, stderr) = check(&bad);
    assert_eq!(code, 1);
    let place = format!("bad.toml:{line}:");
    assert!(stderr.contains(&place), "{stderr}");
    assert!(
        stderr.contains("field `type`") && stderr.contains("holding"),
        "{stderr}"
    );
}

#[test]
fn on_this_machine_the_example_fails_on_its_missing_secret_and_ca_file_and_warns_of_ports() {
    // The example names /etc/edge-agent/plant-ca.pem, EDGE_MQTT_PASSWORD and /dev/ttyUSB0:
    // none is here, as on a gateway not yet provisioned.
    let (code, stdout, stderr) = check_with(&[], &example());
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(!stdout.contains(": ok"), "{stdout}");
    for expected in [
        "error:",
        "`EDGE_MQTT_PASSWORD` (password_env) is not set",
        "cannot read ca_file `/etc/edge-agent/plant-ca.pem`",
        "[kafka.security]: cannot read ca_file `/etc/edge-agent/kafka-ca.pem`",
        "[kafka.security]: environment variable `EDGE_KAFKA_PASSWORD` (password_env) is not set",
        "warning:",
        "`/dev/ttyUSB0` does not exist",
        "the agent would not start as it is",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

#[test]
fn a_kafka_setting_librdkafka_refuses_fails_the_check_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example()).unwrap().replace(
        "\"client.id\" = \"edge-agent-gw-plant7-cab2\"",
        "\"linger.ms\" = \"later\"",
    );
    std::fs::write(&bad, text).unwrap();
    let (code, _, stderr) = check(&bad);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("librdkafka refuses") && stderr.contains("linger.ms"),
        "{stderr}"
    );
}

#[test]
fn kafka_security_files_that_are_missing_or_readable_by_everyone_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("kafka-password");
    std::fs::write(&password, "s3cret\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    let key = dir.path().join("client.key");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o604)).unwrap();
    let text = format!(
        "[agent]\nid = \"gw\"\ndata_dir = {data:?}\n[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n\
         [kafka.security]\nprotocol = \"SASL_SSL\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
         username = \"gw\"\npassword_file = {password:?}\nca_file = \"/nonexistent/ca.pem\"\n\
         cert_file = {key:?}\nkey_file = {key:?}\n",
        data = dir.path().join("data").display().to_string(),
        password = password.display().to_string(),
        key = key.display().to_string(),
    );
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, text).unwrap();
    // The file alone is fine ...
    let (code, stdout, stderr) = check(&file);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // ... the machine is not.
    let (code, _, stderr) = check_with(&[], &file);
    assert_eq!(code, 1, "{stderr}");
    for expected in [
        "[kafka.security]: cannot read ca_file `/nonexistent/ca.pem`",
        "password_file",
        "is readable by every user (mode 644)",
        "is readable by every user (mode 604)",
        "cert_file",
        "holds no PEM `BEGIN CERTIFICATE`",
    ] {
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

#[test]
fn a_kafka_security_key_also_in_the_client_table_is_refused_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[agent]\nid = \"gw\"\ndata_dir = \"/tmp\"\n[kafka]\nbootstrap_servers = \"h:1\"\n\
                [kafka.security]\nprotocol = \"SSL\"\n[kafka.client]\n\
                \"ssl.ca.location\" = \"/etc/ca.pem\"\n";
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, text).unwrap();
    let (code, _, stderr) = check(&file);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("agent.toml:9:"), "{stderr}");
    assert!(
        stderr.contains("`kafka.client.\"ssl.ca.location\"` is also set by [kafka.security]"),
        "{stderr}"
    );
    std::fs::write(
        &file,
        text.replace("protocol = \"SSL\"", "protocol = \"SASL_SSL\""),
    )
    .unwrap();
    let (code, _, stderr) = check(&file);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("`kafka.security.sasl_mechanism` is required with a SASL protocol"),
        "{stderr}"
    );
}

#[test]
fn a_sasl_mechanism_this_build_lacks_is_refused_before_the_agent_would_start() {
    // GSSAPI (Kerberos) is not built into the bundled librdkafka: librdkafka itself accepts
    // the setting and would fail only when the client is created.
    let dir = tempfile::tempdir().unwrap();
    let text = "[agent]\nid = \"gw\"\ndata_dir = \"/tmp\"\n[kafka]\nbootstrap_servers = \"h:1\"\n\
                [kafka.client]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
                \"sasl.mechanism\" = \"GSSAPI\"\n";
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, text).unwrap();
    let (code, _, stderr) = check(&file);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("sasl.mechanism = GSSAPI needs librdkafka's `sasl_gssapi`"),
        "{stderr}"
    );
}

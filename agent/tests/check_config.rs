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

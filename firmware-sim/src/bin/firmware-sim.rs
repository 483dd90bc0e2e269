//! The `firmware-sim` binary (the runner arrives with the sensor-link issue).

fn main() {
    eprintln!("firmware-sim: the runner is not built yet (see the sensor-link issue)");
    std::process::exit(2);
}

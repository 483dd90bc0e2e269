//! The `edge-agent` binary. Thin: parsing arguments and starting the library's tasks.

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--version") | Some("-V") => println!("edge-agent {}", edge_agent::VERSION),
        _ => {
            eprintln!(
                "edge-agent {}: the data path is not built yet (see the open issues); \
                 only --version works",
                edge_agent::VERSION
            );
            std::process::exit(2);
        }
    }
}

//! The `edge-consumer` binary. Thin: parsing arguments and starting the library's loop.

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("--version") | Some("-V") => println!("edge-consumer {}", edge_consumer::VERSION),
        _ => {
            eprintln!(
                "edge-consumer {}: the merge loop is not built yet (see the open issues); \
                 only --version works",
                edge_consumer::VERSION
            );
            std::process::exit(2);
        }
    }
}

//! The partials side of the consumer package's check (`deploy/test-deb.sh`): the installed
//! `edge-consumer` runs as its own user on the installed configuration; this program stands in
//! for the gateways and checks what it made of their partials.
//!
//! ```text
//! deb_consumer create BOOTSTRAP INPUT           the input topic (1 partition), before the consumer starts
//! deb_consumer feed BOOTSTRAP INPUT FINALS      2 gateways x 2 series x 3 windows of partials, as the
//!                                               agent sends them; then every final must equal the batch
//!                                               computation over their readings within 60 s
//! ```
//!
//! Exit 0 when it does; a panic (exit 101) names what differs.

#[path = "../tests/consumer_support/mod.rs"]
mod consumer_support;

use std::time::Duration;

use consumer_support::{cells, check_final, now_ms, produce_by_gateway, reference, Rng, Setup};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["create", bootstrap, input] => {
            edge_tests::kafka::create_topic(bootstrap, input, 1).unwrap_or_else(|e| panic!("{e}"));
            println!("created {input}");
        }
        ["feed", bootstrap, input, finals] => feed(bootstrap, input, finals),
        _ => {
            eprintln!("usage: deb_consumer create BOOTSTRAP INPUT | feed BOOTSTRAP INPUT FINALS");
            std::process::exit(2);
        }
    }
}

fn feed(bootstrap: &str, input: &str, finals: &str) {
    let gateways = ["gw-a", "gw-b"];
    let size = 10_000;
    let base = (now_ms() / size - 30) * size;
    let data = cells(
        &mut Rng(0xdeb),
        &gateways,
        &["deb.t1", "deb.t2"],
        3,
        base,
        size,
    );
    produce_by_gateway(bootstrap, input, &data, &gateways);
    println!("produced {} partials to {input}", data.len());
    // Only `finals` is read; the other names are the reader's, unused here.
    let setup = Setup {
        finals: finals.to_owned(),
        ..Setup::on_input(bootstrap, "deb", input)
    };
    let expected = reference(&data, None);
    let got = setup.wait_for_finals(&expected, Duration::from_secs(60));
    for (key, r) in &expected {
        check_final(key, &got[key], r);
    }
    assert_eq!(got.len(), expected.len(), "no other windows: {got:?}");
    println!("{} finals in {finals} equal the reference", expected.len());
}

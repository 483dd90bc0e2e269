//! The vendored rumqttc (`vendor/rumqttc`, `vendor/README.md`) writes the requests already
//! waiting in its channel together and flushes them once: the PUBACKs of one ingest commit
//! reach the broker in one write, not one system call each. Upstream 0.25.1 writes one request
//! per `poll`, so with it these tests see 1 PUBACK where they expect all of them: they fail if
//! the `[patch.crates-io]` entry is dropped.
//!
//! No broker: a loopback listener plays one. It sends `N` QoS 1 publishes, the client takes
//! them (manual acks), acks them all with `try_ack`, and polls its event loop **once**; then the
//! listener counts the PUBACKs that arrived.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

/// Publishes sent and acked in one go (below the patch's batch of 64).
const N: u16 = 32;

/// One MQTT control packet from the wire: (type nibble, body).
fn packets(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((&first, rest)) = bytes.split_first() {
        let (mut len, mut shift, mut used) = (0usize, 0, 0);
        for &b in rest {
            used += 1;
            len |= usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        if rest.len() < used + len {
            break;
        }
        out.push((first >> 4, rest[used..used + len].to_vec()));
        bytes = &rest[used + len..];
    }
    out
}

/// A QoS 1 PUBLISH of `t` with packet id `pkid` (MQTT 5: with an empty property list).
fn publish(pkid: u16, v5: bool) -> Vec<u8> {
    let mut body = vec![0, 1, b't'];
    body.extend_from_slice(&pkid.to_be_bytes());
    if v5 {
        body.push(0);
    }
    body.push(b'x');
    let mut packet = vec![0x32, body.len() as u8];
    packet.extend(body);
    packet
}

/// The fake broker: CONNACK, `N` publishes once `go` says the client is connected, then every
/// byte the client writes until it has been quiet for 500 ms, sent back through `seen`.
fn broker(listener: TcpListener, v5: bool, go: mpsc::Receiver<()>, seen: mpsc::Sender<Vec<u8>>) {
    let (mut socket, _) = listener.accept().expect("accept");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut connect = [0u8; 256];
    let _ = socket.read(&mut connect).expect("CONNECT");
    let connack: &[u8] = if v5 {
        &[0x20, 3, 0, 0, 0]
    } else {
        &[0x20, 2, 0, 0]
    };
    socket.write_all(connack).expect("CONNACK");
    go.recv().expect("client connected");
    for pkid in 1..=N {
        socket.write_all(&publish(pkid, v5)).expect("PUBLISH");
    }
    go.recv().expect("client acked and polled once");
    let _ = seen.send(read_until_quiet(&mut socket));
}

fn read_until_quiet(socket: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Starts the fake broker; returns its port, the go signal and the bytes it will see.
fn start(v5: bool) -> (u16, mpsc::Sender<()>, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (go_tx, go_rx) = mpsc::channel();
    let (seen_tx, seen_rx) = mpsc::channel();
    std::thread::spawn(move || broker(listener, v5, go_rx, seen_tx));
    (port, go_tx, seen_rx)
}

fn pubacks(bytes: &[u8]) -> Vec<u16> {
    packets(bytes)
        .into_iter()
        .filter(|(kind, _)| *kind == 4)
        .map(|(_, body)| u16::from_be_bytes([body[0], body[1]]))
        .collect()
}

/// One test body for both protocol versions: rumqttc's 3.1.1 and MQTT 5 clients have the same
/// shape under different module paths.
macro_rules! acks_in_one_poll {
    ($v5:expr, $client_id:expr) => {{
        let (port, go, seen) = start($v5);
        let mut options = MqttOptions::new($client_id, "127.0.0.1", port);
        options
            .set_manual_acks(true)
            .set_keep_alive(Duration::from_secs(60));
        let (client, mut eventloop) = AsyncClient::new(options, 128);
        let mut received = Vec::new();
        while received.len() < usize::from(N) {
            match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => go.send(()).expect("go"),
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => received.push(p),
                Ok(Ok(_)) => {}
                other => panic!("no publish from the fake broker: {other:?}"),
            }
        }
        for p in &received {
            client.try_ack(p).expect("ack queued");
        }
        let _ = eventloop.poll().await.expect("one poll");
        go.send(()).expect("go");
        let acked = pubacks(&seen.recv().expect("bytes"));
        assert_eq!(
            acked,
            (1..=N).collect::<Vec<_>>(),
            "every PUBACK in one poll"
        );
    }};
}

#[tokio::test]
async fn v311_writes_the_waiting_pubacks_in_one_poll() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
    acks_in_one_poll!(false, "batching");
}

#[tokio::test]
async fn v5_writes_the_waiting_pubacks_in_one_poll() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    acks_in_one_poll!(true, "batching5");
}

#[test]
fn the_packet_reader_splits_pubacks() {
    let wire = [0x40, 2, 0, 7, 0x40, 3, 0, 9, 0];
    assert_eq!(pubacks(&wire), vec![7, 9]);
    assert_eq!(packets(&publish(3, true)).len(), 1);
}

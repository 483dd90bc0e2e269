//! Fuzzes the decoders of what the agent reads back from its own database (a damaged file must
//! give an error, never a panic): ingest log readings and dead letters, outbox records, MQTT
//! subscriptions records, dedupe groups, and the forwarder's progress marker as read back from Kafka. Whatever
//! decodes re-encodes to the same bytes.
#![no_main]

use edge_agent::forward::progress::Marker;
use edge_agent::ingest::DeadLetter;
use edge_agent::outbox::OutboxRecord;
use edge_agent::reading::Reading;
use edge_agent::source::mqtt::subscriptions::Record as SubscriptionsRecord;
use edge_agent::store::rows::DedupeGroup;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(reading) = Reading::decode(data) {
        assert_eq!(reading.encode(), data, "a stored reading re-encodes to its bytes");
    }
    if let Ok(dead) = DeadLetter::decode(data) {
        assert_eq!(dead.encode(), data, "a stored dead letter re-encodes to its bytes");
    }
    if let Ok(record) = OutboxRecord::decode(data) {
        assert_eq!(record.encode().expect("a decoded record fits"), data);
    }
    if let Ok(record) = SubscriptionsRecord::decode(data) {
        assert_eq!(record.encode(), data, "a subscriptions record re-encodes to its bytes");
    }
    if let Ok(group) = DedupeGroup::decode(data) {
        assert_eq!(group.encode(), data, "a dedupe group re-encodes to its bytes");
        assert_eq!(group.keys().count(), group.len() as usize, "every key is there");
    }
    if let Ok(marker) = Marker::decode(data) {
        assert_eq!(marker.encode(), data, "a progress marker re-encodes to its bytes");
    }
});

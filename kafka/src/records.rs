//! Received records, owned.

use rdkafka::message::{Headers, Message};

/// A record's headers as owned `(name, value)` pairs, in order; a header without a value has
/// an empty one.
pub fn owned_headers<M: Message>(message: &M) -> Vec<(String, Vec<u8>)> {
    message
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

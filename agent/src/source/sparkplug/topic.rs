//! The Sparkplug B topic namespace: `spBv1.0/<group>/<type>/<edge_node>[/<device>]`, and
//! `spBv1.0/STATE/<host>` (primary host state, Sparkplug 3.0). No I/O.

/// The message types of the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    NBirth,
    NData,
    NDeath,
    NCmd,
    DBirth,
    DData,
    DDeath,
    DCmd,
    State,
}

impl MessageType {
    fn parse(level: &str) -> Option<MessageType> {
        Some(match level {
            "NBIRTH" => MessageType::NBirth,
            "NDATA" => MessageType::NData,
            "NDEATH" => MessageType::NDeath,
            "NCMD" => MessageType::NCmd,
            "DBIRTH" => MessageType::DBirth,
            "DDATA" => MessageType::DData,
            "DDEATH" => MessageType::DDeath,
            "DCMD" => MessageType::DCmd,
            "STATE" => MessageType::State,
            _ => return None,
        })
    }

    /// Device messages name a device as the fifth level; node messages must not.
    fn is_device(self) -> bool {
        matches!(
            self,
            MessageType::DBirth | MessageType::DData | MessageType::DDeath | MessageType::DCmd
        )
    }
}

/// A parsed Sparkplug B topic. `device` is `Some` exactly for the `D*` types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topic<'t> {
    pub group: &'t str,
    pub kind: MessageType,
    pub edge_node: &'t str,
    pub device: Option<&'t str>,
}

/// Why a topic is not in the namespace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{topic}` is not a Sparkplug B topic (spBv1.0/<group>/<type>/<edge_node>[/<device>]): {why}"
)]
pub struct TopicError {
    pub topic: String,
    pub why: &'static str,
}

/// Parses `topic`. `spBv1.0/STATE/<host>` (and the 2.2 form `STATE/<host>`) parse as
/// [`MessageType::State`] with the host as `edge_node`.
pub fn parse(topic: &str) -> Result<Topic<'_>, TopicError> {
    let fail = |why| TopicError {
        topic: topic.to_owned(),
        why,
    };
    let levels: Vec<&str> = topic.split('/').collect();
    match levels.as_slice() {
        ["STATE", host] | ["spBv1.0", "STATE", host] => {
            return Ok(Topic {
                group: "",
                kind: MessageType::State,
                edge_node: host,
                device: None,
            })
        }
        ["spBv1.0", ..] => {}
        _ => return Err(fail("it does not start with `spBv1.0/`")),
    }
    let (group, kind, node, device) = match levels.as_slice() {
        [_, g, t, n] => (*g, *t, *n, None),
        [_, g, t, n, d] => (*g, *t, *n, Some(*d)),
        _ => return Err(fail("it has not 4 or 5 levels")),
    };
    let kind = MessageType::parse(kind).ok_or_else(|| fail("unknown message type"))?;
    if group.is_empty() || node.is_empty() || device.is_some_and(str::is_empty) {
        return Err(fail("an empty group, edge node or device"));
    }
    if kind.is_device() != device.is_some() {
        return Err(fail(
            "D* types need a device level, N* types must not have one",
        ));
    }
    Ok(Topic {
        group,
        kind,
        edge_node: node,
        device,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_and_device_topics_parse_into_their_parts() {
        assert_eq!(
            parse("spBv1.0/plant/DDATA/gw1/pump").unwrap(),
            Topic {
                group: "plant",
                kind: MessageType::DData,
                edge_node: "gw1",
                device: Some("pump"),
            }
        );
        let t = parse("spBv1.0/plant/NBIRTH/gw1").unwrap();
        assert_eq!((t.kind, t.device), (MessageType::NBirth, None));
        assert_eq!(
            parse("spBv1.0/STATE/host").unwrap().kind,
            MessageType::State
        );
    }

    #[test]
    fn topics_outside_the_namespace_say_why() {
        for bad in [
            "spAv1.0/g/NDATA/n",
            "spBv1.0/g/NDATA",
            "spBv1.0/g/NDATA/n/d",
            "spBv1.0/g/DDATA/n",
            "spBv1.0/g/XDATA/n",
            "spBv1.0//NDATA/n",
            "spBv1.0/g/DDATA/n/d/x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}

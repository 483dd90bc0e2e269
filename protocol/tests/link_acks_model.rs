//! Model-based test of the link's ack rule: random sequences of arrivals and durable reports,
//! replayed against [`Watermark`] and against the plain `BTreeSet` model the agent carried
//! before the rule moved here. They must agree on every answer and every `W`.
use std::collections::BTreeSet;

use edge_protocol::link_acks::{Arrival, Durable, Watermark};
use proptest::prelude::*;

/// The rule written the obvious way: `W` and an unbounded set of durable frames above it.
#[derive(Default)]
struct Model {
    w: u32,
    durable: BTreeSet<u32>,
}

impl Model {
    fn advance(&mut self) {
        while self.durable.remove(&(self.w + 1)) {
            self.w += 1;
        }
        self.durable = self.durable.split_off(&(self.w + 1));
    }

    fn on_readings(&mut self, seq: u32, oldest_unacked: u32) -> Arrival {
        let settled_below = oldest_unacked.saturating_sub(1).min(seq.saturating_sub(1));
        if settled_below > self.w {
            self.w = settled_below;
            self.advance();
        }
        if seq <= self.w {
            Arrival::Settled
        } else {
            Arrival::Open
        }
    }

    fn on_durable(&mut self, seq: u32) -> Durable {
        if seq <= self.w {
            return Durable::Settled;
        }
        let answer = if self.durable.insert(seq) {
            Durable::New
        } else {
            Durable::Again
        };
        self.advance();
        answer
    }
}

#[derive(Debug, Clone)]
enum Step {
    Readings { seq: u32, oldest_unacked: u32 },
    Durable { seq: u32 },
}

fn step() -> impl Strategy<Value = Step> {
    // Seqs stay well within the window, where the model and the bitmap must agree exactly.
    prop_oneof![
        (0u32..300, 0u32..300).prop_map(|(seq, oldest_unacked)| Step::Readings {
            seq,
            oldest_unacked
        }),
        (0u32..300).prop_map(|seq| Step::Durable { seq }),
    ]
}

proptest! {
    #[test]
    fn the_watermark_answers_like_the_set_model(steps in proptest::collection::vec(step(), 0..400)) {
        let mut model = Model::default();
        let mut w = Watermark::new();
        for s in steps {
            match s {
                Step::Readings { seq, oldest_unacked } => {
                    prop_assert_eq!(w.on_readings(seq, oldest_unacked), model.on_readings(seq, oldest_unacked));
                }
                Step::Durable { seq } => {
                    prop_assert_eq!(w.on_durable(seq), model.on_durable(seq));
                }
            }
            prop_assert_eq!(w.seq(), model.w);
        }
    }
}

//! Messages between nodes about plans, carried by discovery's `send_to`/`broadcast`.

use serde::{Deserialize, Serialize};

/// One stage of an assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageAssignment {
    /// Peer id of the node that runs it.
    pub peer: String,
    /// Layers `[start, end)`.
    pub layers: [u32; 2],
    /// The planner's predicted compute milliseconds per token.
    pub predicted_ms: f64,
}

/// The coordinator's plan for one epoch: who runs which layers, in pipeline order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Increases with every replan; a node acts only on epochs newer than any it has seen.
    pub epoch: u64,
    /// sha256 of the model the plan is for.
    pub model_sha256: String,
    /// Peer id of the coordinator that made it.
    pub coordinator: String,
    /// Stages in pipeline order; their layers are contiguous and cover the model.
    pub stages: Vec<StageAssignment>,
    /// The planner's predicted milliseconds per token for one stream.
    pub predicted_ms_per_token: f64,
}

impl Assignment {
    /// The position of `peer`'s stage, if it runs one.
    pub fn stage_of(&self, peer: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.peer == peer)
    }

    /// Same stages and layers (epochs and predictions aside).
    pub fn same_layout(&self, other: &Assignment) -> bool {
        self.stages.len() == other.stages.len()
            && self
                .stages
                .iter()
                .zip(&other.stages)
                .all(|(a, b)| a.peer == b.peer && a.layers == b.layers)
    }
}

/// What nodes tell each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// A new plan: load your layers and report ready in your advert.
    Assign(Assignment),
}

impl Control {
    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("control messages always serialize")
    }

    /// Decodes a message from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Control, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let a = Control::Assign(Assignment {
            epoch: 3,
            model_sha256: "ab".repeat(32),
            coordinator: "peer-a".into(),
            stages: vec![StageAssignment {
                peer: "peer-a".into(),
                layers: [0, 30],
                predicted_ms: 4.0,
            }],
            predicted_ms_per_token: 5.0,
        });
        assert_eq!(Control::decode(&a.encode()).unwrap(), a);
        assert!(Control::decode(b"\xff{not json").is_err());
    }
}

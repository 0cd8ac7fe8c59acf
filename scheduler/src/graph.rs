//! The device graph: devices as vertices, measured links as edges.
//!
//! Links are undirected: a round-trip time is symmetric by nature and Shoal measures one
//! bandwidth per pair. A missing edge means "not directly reachable"; the planner either
//! refuses such a hop or, when [`crate::PlannerConfig::default_link`] is set, prices it with
//! that default (useful when the fleet has not finished probing every pair).

use std::collections::HashMap;

use petgraph::graph::{NodeIndex, UnGraph};
use petgraph::visit::EdgeRef;
use serde::{Deserialize, Serialize};

use crate::error::GraphError;

/// One device as it advertises itself: identity, memory and measured speed.
///
/// Costs are measured on the device running ONE layer of the model, so a CPU share limit or
/// thermal throttle is already folded into the numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// libp2p peer id (string form).
    pub id: String,
    /// Bytes this device may spend on weights, KV cache and scratch.
    pub memory_bytes: u64,
    /// Worker threads the device runs the model with (informational; already in the costs).
    pub threads: u32,
    /// Milliseconds to run one layer for one token during decode.
    pub decode_ms_per_layer: f64,
    /// Milliseconds per prompt token to run one layer during prefill (batched, so cheaper).
    pub prefill_ms_per_layer: f64,
    /// sha256 (hex) of the model file the device holds, if any. Only devices holding the
    /// requested model are given layers.
    pub model_sha256: Option<String>,
}

impl Device {
    /// Whether this device holds the model with the given sha256.
    pub fn holds(&self, model_sha256: &str) -> bool {
        self.model_sha256.as_deref() == Some(model_sha256)
    }

    fn validate(&self) -> Result<(), GraphError> {
        check(&self.id, "decode_ms_per_layer", self.decode_ms_per_layer)?;
        check(&self.id, "prefill_ms_per_layer", self.prefill_ms_per_layer)
    }
}

/// A measured link between two devices.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Round-trip time in milliseconds.
    pub rtt_ms: f64,
    /// Sustained bandwidth in bytes per second.
    pub bandwidth_bytes_per_s: f64,
}

impl Link {
    /// One-way latency of sending `bytes`: half the round trip plus serialization time.
    pub fn hop_ms(&self, bytes: u64) -> f64 {
        self.rtt_ms / 2.0 + self.transfer_ms(bytes)
    }

    /// Time the link is busy carrying `bytes`; this is what limits pipelined throughput.
    pub fn transfer_ms(&self, bytes: u64) -> f64 {
        bytes as f64 * 1000.0 / self.bandwidth_bytes_per_s
    }

    fn validate(&self, a: &str, b: &str) -> Result<(), GraphError> {
        let name = || format!("{a}<->{b}");
        check(&name(), "rtt_ms", self.rtt_ms)?;
        check(&name(), "bandwidth_bytes_per_s", self.bandwidth_bytes_per_s)?;
        if self.bandwidth_bytes_per_s <= 0.0 {
            return Err(GraphError::ZeroBandwidth {
                a: a.to_owned(),
                b: b.to_owned(),
            });
        }
        Ok(())
    }
}

fn check(device: &str, field: &'static str, value: f64) -> Result<(), GraphError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(GraphError::InvalidMeasurement {
            device: device.to_owned(),
            field,
            value,
        })
    }
}

/// Devices and the links measured between them.
///
/// Vertices keep insertion order, which is the order baselines such as
/// [`crate::planner::even_split`] use.
#[derive(Debug, Clone, Default)]
pub struct DeviceGraph {
    graph: UnGraph<Device, Link>,
    index: HashMap<String, NodeIndex>,
}

impl DeviceGraph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a device, or replaces the advert of a device with the same id (links are kept).
    pub fn upsert_device(&mut self, device: Device) -> Result<(), GraphError> {
        device.validate()?;
        match self.index.get(&device.id) {
            Some(&ix) => self.graph[ix] = device,
            None => {
                let id = device.id.clone();
                let ix = self.graph.add_node(device);
                self.index.insert(id, ix);
            }
        }
        Ok(())
    }

    /// Removes a device and its links. Returns the removed advert, if it was present.
    pub fn remove_device(&mut self, id: &str) -> Option<Device> {
        let ix = self.index.remove(id)?;
        // petgraph moves the last node into the freed slot; fix its index entry.
        let last = NodeIndex::new(self.graph.node_count() - 1);
        let removed = self.graph.remove_node(ix)?;
        if last != ix {
            let moved = self.graph[ix].id.clone();
            self.index.insert(moved, ix);
        }
        Some(removed)
    }

    /// Records (or updates) the measured link between two known devices.
    pub fn set_link(&mut self, a: &str, b: &str, link: Link) -> Result<(), GraphError> {
        link.validate(a, b)?;
        if a == b {
            return Err(GraphError::SelfLink(a.to_owned()));
        }
        let ia = self.node(a)?;
        let ib = self.node(b)?;
        self.graph.update_edge(ia, ib, link);
        Ok(())
    }

    /// The advert of device `id`.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.index.get(id).map(|&ix| &self.graph[ix])
    }

    /// The measured link between `a` and `b`, if any.
    pub fn link(&self, a: &str, b: &str) -> Option<Link> {
        let ia = *self.index.get(a)?;
        let ib = *self.index.get(b)?;
        self.graph.find_edge(ia, ib).map(|e| self.graph[e])
    }

    /// All devices in insertion order (modulo removals).
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.graph.node_weights()
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// Whether the graph has no devices.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Number of measured links.
    pub fn link_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// Every link touching `id`, as (neighbour id, link). Used to fill cost tables without a
    /// lookup per pair.
    pub(crate) fn neighbours(&self, id: &str) -> impl Iterator<Item = (&str, Link)> {
        let ix = self.index.get(id).copied();
        ix.into_iter().flat_map(move |ix| {
            self.graph.edges(ix).map(move |e| {
                let other = if e.source() == ix {
                    e.target()
                } else {
                    e.source()
                };
                (self.graph[other].id.as_str(), *e.weight())
            })
        })
    }

    fn node(&self, id: &str) -> Result<NodeIndex, GraphError> {
        self.index
            .get(id)
            .copied()
            .ok_or_else(|| GraphError::UnknownDevice(id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: &str) -> Device {
        Device {
            id: id.into(),
            memory_bytes: 1 << 30,
            threads: 1,
            decode_ms_per_layer: 0.3,
            prefill_ms_per_layer: 0.05,
            model_sha256: Some("m".into()),
        }
    }

    const LINK: Link = Link {
        rtt_ms: 1.0,
        bandwidth_bytes_per_s: 1e8,
    };

    #[test]
    fn remove_keeps_index_consistent() {
        let mut g = DeviceGraph::new();
        for id in ["a", "b", "c"] {
            g.upsert_device(dev(id)).unwrap();
        }
        g.set_link("b", "c", LINK).unwrap();
        assert_eq!(g.remove_device("a").map(|d| d.id), Some("a".to_owned()));
        assert_eq!(g.device("c").map(|d| d.id.as_str()), Some("c"));
        assert_eq!(g.link("c", "b"), Some(LINK));
        assert!(g.device("a").is_none());
        assert_eq!(g.neighbours("b").count(), 1);
    }

    #[test]
    fn rejects_bad_measurements() {
        let mut g = DeviceGraph::new();
        let mut d = dev("a");
        d.decode_ms_per_layer = f64::NAN;
        assert!(matches!(
            g.upsert_device(d),
            Err(GraphError::InvalidMeasurement { .. })
        ));
        g.upsert_device(dev("a")).unwrap();
        g.upsert_device(dev("b")).unwrap();
        let zero = Link {
            rtt_ms: 1.0,
            bandwidth_bytes_per_s: 0.0,
        };
        assert!(matches!(
            g.set_link("a", "b", zero),
            Err(GraphError::ZeroBandwidth { .. })
        ));
        assert_eq!(
            g.set_link("a", "a", LINK),
            Err(GraphError::SelfLink("a".into()))
        );
        assert_eq!(
            g.set_link("a", "z", LINK),
            Err(GraphError::UnknownDevice("z".into()))
        );
    }

    #[test]
    fn hop_cost_is_half_rtt_plus_transfer() {
        // 1 ms rtt, 100 MB/s: 1 MB takes 10 ms to serialize.
        assert!((LINK.hop_ms(1_000_000) - 10.5).abs() < 1e-9);
        assert!((LINK.transfer_ms(1_000_000) - 10.0).abs() < 1e-9);
    }
}

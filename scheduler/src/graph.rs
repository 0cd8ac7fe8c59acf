//! The device graph: devices as vertices, measured links as directed edges.
//!
//! An edge is one ordered pair's measurement (an uplink may be slower than the downlink);
//! [`DeviceGraph::set_link`] records both directions at once. A pair with no edge has not
//! been measured: the planner refuses a hop over it unless
//! [`crate::PlannerConfig::default_link`] prices it (useful while the fleet is still
//! probing). A pair reported down ([`DeviceGraph::set_link_down`]) is never used, default or
//! not.

use std::collections::HashMap;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::{Deserialize, Serialize};

use crate::error::GraphError;

/// Process overhead assumed for a device that does not advertise a measured one: what the
/// live coordinator has reserved per node since the first cluster ran (runtime, network
/// buffers, scratch rows), before weights and KV.
pub const DEFAULT_OVERHEAD_BYTES: u64 = 16 << 20;

/// The CFS period Linux uses unless a cgroup sets another.
const DEFAULT_CPU_PERIOD_MS: f64 = 100.0;

/// One device as it advertises itself: identity, memory, measured speed, and whether it
/// serves the API.
///
/// Costs are measured on the device running ONE layer of the model, so a CPU share limit or
/// thermal throttle is already folded into the numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// libp2p peer id (string form).
    pub id: String,
    /// Bytes this device may spend in all: its process overhead, weights, KV cache.
    pub memory_bytes: u64,
    /// Worker threads the device runs the model with (informational; already in the costs).
    pub threads: u32,
    /// Milliseconds to run one layer for one token during decode at full speed: a single
    /// step timed the way a stage runs it (woken for it, after idling), not slowed by a CPU
    /// quota ([`Device::cpu_quota`] says how much that costs under load).
    pub decode_ms_per_layer: f64,
    /// Milliseconds per prompt token to run one layer during prefill (batched, so cheaper).
    pub prefill_ms_per_layer: f64,
    /// sha256 (hex) of the model file the device holds, if any. Only devices holding the
    /// requested model are given layers or vocabulary slices.
    pub model_sha256: Option<String>,
    /// Whether the device serves the API. Such a device holds a head (embedding rows read
    /// from the file, final norm, and the output product unless the plan splits it); a
    /// device that does not serve holds its layers and nothing else.
    #[serde(default)]
    pub serves_api: bool,
    /// Bytes the device's process takes besides weights and KV cache, as measured by the
    /// node ([`DEFAULT_OVERHEAD_BYTES`] when it does not say).
    #[serde(default = "default_overhead")]
    pub overhead_bytes: u64,
    /// Measured milliseconds of the whole output product (final norm + output head over
    /// the full vocabulary) for one token, at full speed like `decode_ms_per_layer`;
    /// `None` estimates it as the model's [`crate::ModelProfile::head_cost_layers`] ×
    /// `decode_ms_per_layer`.
    #[serde(default)]
    pub head_ms: Option<f64>,
    /// Cores a cgroup CPU quota allows the device (`None`: no quota).
    #[serde(default)]
    pub cpu_quota: Option<f64>,
    /// The quota's period in milliseconds (`None`: the kernel's default, 100 ms).
    #[serde(default)]
    pub cpu_period_ms: Option<f64>,
}

fn default_overhead() -> u64 {
    DEFAULT_OVERHEAD_BYTES
}

impl Device {
    /// A device with the defaults for what nodes may not advertise yet: it does not serve
    /// the API, has [`DEFAULT_OVERHEAD_BYTES`] of overhead and no measured head.
    pub fn new(
        id: impl Into<String>,
        memory_bytes: u64,
        decode_ms_per_layer: f64,
        prefill_ms_per_layer: f64,
        model_sha256: Option<String>,
    ) -> Self {
        Self {
            id: id.into(),
            memory_bytes,
            threads: 1,
            decode_ms_per_layer,
            prefill_ms_per_layer,
            model_sha256,
            serves_api: false,
            overhead_bytes: DEFAULT_OVERHEAD_BYTES,
            head_ms: None,
            cpu_quota: None,
            cpu_period_ms: None,
        }
    }

    /// Whether this device holds the model with the given sha256.
    pub fn holds(&self, model_sha256: &str) -> bool {
        self.model_sha256.as_deref() == Some(model_sha256)
    }

    /// Milliseconds of the whole output product on this device at full speed, before any
    /// slowdown.
    pub fn head_decode_ms(&self, head_cost_layers: f64) -> f64 {
        self.head_ms
            .unwrap_or(head_cost_layers * self.decode_ms_per_layer)
    }

    /// What work of `ms` at full speed takes per token under load: a CPU quota smaller than
    /// the device's threads stretches it to its CPU time over the quota (what a stage's
    /// reported step times measure, and what limits throughput).
    pub fn sustained_ms(&self, ms: f64) -> f64 {
        let threads = f64::from(self.threads.max(1));
        match self.cpu_quota {
            Some(quota) if quota < threads => ms * threads / quota,
            _ => ms,
        }
    }

    /// What work of `ms` at full speed takes when one stream runs it.
    ///
    /// Under a quota a device runs at full speed until the period's quota is spent, then
    /// not at all. One stream leaves a stage idle while the rest of the pipeline works, so
    /// a step whose CPU time fits one period's quota runs at full speed; its CPU time is
    /// `ms × threads` against `quota × period`, i.e. it fits when its sustained time is at
    /// most one period. A longer step runs at the sustained rate.
    pub fn one_stream_ms(&self, ms: f64) -> f64 {
        let sustained = self.sustained_ms(ms);
        if sustained <= self.period_ms() {
            ms
        } else {
            sustained
        }
    }

    fn period_ms(&self) -> f64 {
        self.cpu_period_ms.unwrap_or(DEFAULT_CPU_PERIOD_MS)
    }

    fn validate(&self) -> Result<(), GraphError> {
        check(&self.id, "decode_ms_per_layer", self.decode_ms_per_layer)?;
        check(&self.id, "prefill_ms_per_layer", self.prefill_ms_per_layer)?;
        if let Some(ms) = self.head_ms {
            check(&self.id, "head_ms", ms)?;
        }
        for (field, value) in [
            ("cpu_quota", self.cpu_quota),
            ("cpu_period_ms", self.cpu_period_ms),
        ] {
            if let Some(v) = value.filter(|v| !(v.is_finite() && *v > 0.0)) {
                return Err(GraphError::InvalidMeasurement {
                    device: self.id.clone(),
                    field,
                    value: v,
                });
            }
        }
        Ok(())
    }
}

/// A measured link from one device to another.
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
        let name = || format!("{a}->{b}");
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

/// What the graph knows about one ordered pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum LinkState {
    /// Measured and usable.
    Up(Link),
    /// Reported unusable (a failed probe, an interface down): no hop may use it.
    Down,
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
    graph: DiGraph<Device, LinkState>,
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

    /// Records (or updates) the measured link between two known devices, both directions.
    pub fn set_link(&mut self, a: &str, b: &str, link: Link) -> Result<(), GraphError> {
        self.set_one_way_link(a, b, link)?;
        self.set_one_way_link(b, a, link)
    }

    /// Records (or updates) the measured link from `from` to `to` only.
    pub fn set_one_way_link(&mut self, from: &str, to: &str, link: Link) -> Result<(), GraphError> {
        link.validate(from, to)?;
        self.set_state(from, to, LinkState::Up(link))
    }

    /// Marks the pair unusable in both directions until a new measurement replaces it.
    pub fn set_link_down(&mut self, a: &str, b: &str) -> Result<(), GraphError> {
        self.set_state(a, b, LinkState::Down)?;
        self.set_state(b, a, LinkState::Down)
    }

    fn set_state(&mut self, from: &str, to: &str, state: LinkState) -> Result<(), GraphError> {
        if from == to {
            return Err(GraphError::SelfLink(from.to_owned()));
        }
        let ia = self.node(from)?;
        let ib = self.node(to)?;
        self.graph.update_edge(ia, ib, state);
        Ok(())
    }

    /// The advert of device `id`.
    pub fn device(&self, id: &str) -> Option<&Device> {
        self.index.get(id).map(|&ix| &self.graph[ix])
    }

    /// The usable measured link from `from` to `to`, if any.
    pub fn link(&self, from: &str, to: &str) -> Option<Link> {
        match self.link_state(from, to)? {
            LinkState::Up(link) => Some(link),
            LinkState::Down => None,
        }
    }

    /// What is known about the pair: measured, down, or nothing (`None`).
    pub fn link_state(&self, from: &str, to: &str) -> Option<LinkState> {
        let ia = *self.index.get(from)?;
        let ib = *self.index.get(to)?;
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

    /// Number of ordered pairs with a measurement (up or down).
    pub fn link_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// Every ordered pair leaving `id`, as (receiving device id, state). Used to fill cost
    /// tables without a lookup per pair.
    pub(crate) fn links_from(&self, id: &str) -> impl Iterator<Item = (&str, LinkState)> {
        let ix = self.index.get(id).copied();
        ix.into_iter().flat_map(move |ix| {
            self.graph
                .edges_directed(ix, Direction::Outgoing)
                .map(move |e| (self.graph[e.target()].id.as_str(), *e.weight()))
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
        Device::new(id, 1 << 30, 0.3, 0.05, Some("m".into()))
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
        assert_eq!(g.links_from("b").count(), 1);
    }

    #[test]
    fn links_are_per_ordered_pair_and_can_go_down() {
        let mut g = DeviceGraph::new();
        for id in ["a", "b"] {
            g.upsert_device(dev(id)).unwrap();
        }
        let slow_up = Link {
            rtt_ms: 1.0,
            bandwidth_bytes_per_s: 1e6,
        };
        g.set_link("a", "b", LINK).unwrap();
        g.set_one_way_link("b", "a", slow_up).unwrap();
        assert_eq!(g.link("a", "b"), Some(LINK));
        assert_eq!(g.link("b", "a"), Some(slow_up));
        g.set_link_down("a", "b").unwrap();
        assert_eq!(g.link("a", "b"), None);
        assert_eq!(g.link_state("b", "a"), Some(LinkState::Down));
        assert_eq!(g.link_count(), 2);
        g.set_link("b", "a", LINK).unwrap();
        assert_eq!(g.link("a", "b"), Some(LINK));
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
    fn a_quota_slows_sustained_work_and_long_steps_only() {
        let mut d = dev("q");
        assert_eq!(d.sustained_ms(3.0), 3.0);
        // Half a core over 4 ms periods: 2 ms of CPU per period.
        d.cpu_quota = Some(0.5);
        d.cpu_period_ms = Some(4.0);
        assert_eq!(d.sustained_ms(1.0), 2.0);
        assert_eq!(d.one_stream_ms(1.0), 1.0, "fits one period's quota");
        assert_eq!(d.one_stream_ms(3.0), 6.0, "spans periods");
        // Two threads under 1.5 cores: a step's CPU is twice its wall time.
        d.threads = 2;
        d.cpu_quota = Some(1.5);
        assert!((d.sustained_ms(3.0) - 4.0).abs() < 1e-12);
        // A quota above the threads changes nothing.
        d.cpu_quota = Some(4.0);
        assert_eq!(d.one_stream_ms(300.0), 300.0);
    }

    #[test]
    fn hop_cost_is_half_rtt_plus_transfer() {
        // 1 ms rtt, 100 MB/s: 1 MB takes 10 ms to serialize.
        assert!((LINK.hop_ms(1_000_000) - 10.5).abs() < 1e-9);
        assert!((LINK.transfer_ms(1_000_000) - 10.0).abs() < 1e-9);
    }
}

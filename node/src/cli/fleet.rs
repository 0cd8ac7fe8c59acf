//! The devices `shoal plan` plans over, from one of three sources: a fleet file (what-if
//! planning for hardware you do not have at hand), a running node's cluster view (the real
//! fleet), or copies of this machine measured on the spot.

use std::path::Path;

use anyhow::{bail, Context};
use scheduler::{Device, DeviceGraph, Link};
use serde::Deserialize;
use shoal::cluster::profile::parse_size;
use shoal::cluster::ClusterView;

/// A fleet file: devices with their measured costs, and optionally the links between them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FleetFile {
    /// Device that feeds tokens and samples; the first device when absent.
    #[serde(default)]
    pub(crate) head: Option<String>,
    /// Price of a hop between devices with no entry in `links`; the command line's
    /// `--rtt-ms`/`--bandwidth-mbps` when absent.
    #[serde(default)]
    pub(crate) default_link: Option<LinkSpec>,
    pub(crate) devices: Vec<DeviceSpec>,
    #[serde(default)]
    pub(crate) links: Vec<LinkEntry>,
}

/// One device of a fleet file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceSpec {
    pub(crate) id: String,
    /// Bytes, or a human size such as "512MiB".
    pub(crate) memory: Size,
    #[serde(default = "one")]
    pub(crate) threads: u32,
    pub(crate) decode_ms_per_layer: f64,
    /// The decode figure when absent (an upper bound: batching only makes prefill cheaper).
    #[serde(default)]
    pub(crate) prefill_ms_per_layer: Option<f64>,
    /// Whether the device holds the model being planned; true when absent.
    #[serde(default)]
    pub(crate) holds_model: Option<bool>,
}

fn one() -> u32 {
    1
}

/// A memory size in a fleet file: a number of bytes or a string `parse_size` accepts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn bytes(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(b) => Ok(*b),
            Size::Text(t) => parse_size(t),
        }
    }
}

/// Round trip and bandwidth of a link.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkSpec {
    pub(crate) rtt_ms: f64,
    /// Megabits per second, the unit network links are quoted in.
    pub(crate) bandwidth_mbps: f64,
}

impl LinkSpec {
    pub(crate) fn link(self) -> Link {
        Link {
            rtt_ms: self.rtt_ms,
            bandwidth_bytes_per_s: self.bandwidth_mbps * 1e6 / 8.0,
        }
    }
}

/// A measured link between two devices of a fleet file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkEntry {
    pub(crate) a: String,
    pub(crate) b: String,
    pub(crate) rtt_ms: f64,
    pub(crate) bandwidth_mbps: f64,
}

/// Devices to plan over, where they came from, and the head node.
pub(crate) struct Fleet {
    pub(crate) graph: DeviceGraph,
    pub(crate) head: Option<String>,
    /// Overrides the command line's default link.
    pub(crate) default_link: Option<Link>,
    /// Where the devices came from, for the report.
    pub(crate) source: String,
}

/// Reads a fleet file; devices holding the model get `sha256` as theirs.
pub(crate) fn from_file(path: &Path, sha256: &str) -> anyhow::Result<Fleet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: FleetFile =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut graph = DeviceGraph::new();
    for d in &file.devices {
        let memory = d
            .memory
            .bytes()
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("device {}: memory", d.id))?;
        graph.upsert_device(Device {
            id: d.id.clone(),
            memory_bytes: memory,
            threads: d.threads,
            decode_ms_per_layer: d.decode_ms_per_layer,
            prefill_ms_per_layer: d.prefill_ms_per_layer.unwrap_or(d.decode_ms_per_layer),
            model_sha256: d.holds_model.unwrap_or(true).then(|| sha256.to_owned()),
        })?;
    }
    for l in &file.links {
        let spec = LinkSpec {
            rtt_ms: l.rtt_ms,
            bandwidth_mbps: l.bandwidth_mbps,
        };
        graph.set_link(&l.a, &l.b, spec.link())?;
    }
    let head = match file.head {
        Some(h) if graph.device(&h).is_none() => bail!("head {h} is not a device of the fleet"),
        Some(h) => Some(h),
        None => file.devices.first().map(|d| d.id.clone()),
    };
    Ok(Fleet {
        graph,
        head,
        default_link: file.default_link.map(LinkSpec::link),
        source: format!("fleet file {}", path.display()),
    })
}

/// The members of a running cluster. Members that have not measured themselves yet are left
/// out (the planner cannot price them); the view carries no prefill figure, so decode stands
/// in for it.
pub(crate) fn from_view(view: &ClusterView, sha256: &str, url: &str) -> anyhow::Result<Fleet> {
    let mut graph = DeviceGraph::new();
    let mut unmeasured = 0;
    for m in &view.members {
        let Some(decode) = m.decode_ms_per_layer else {
            unmeasured += 1;
            continue;
        };
        graph.upsert_device(Device {
            id: m.peer_id.clone(),
            memory_bytes: m.memory_budget_bytes,
            threads: m.threads,
            decode_ms_per_layer: decode,
            prefill_ms_per_layer: decode,
            model_sha256: m.holds_model.then(|| sha256.to_owned()),
        })?;
    }
    if graph.is_empty() {
        bail!("no member of the cluster at {url} has measured its layer cost yet");
    }
    let head = view
        .plan
        .as_ref()
        .map(|p| p.head.clone())
        .or_else(|| Some(view.node.clone()))
        .filter(|h| graph.device(h).is_some());
    let mut source = format!("cluster at {url} ({} members", view.members.len());
    if unmeasured > 0 {
        source.push_str(&format!(", {unmeasured} not yet measured and left out"));
    }
    source.push(')');
    Ok(Fleet {
        graph,
        head,
        default_link: None,
        source,
    })
}

/// `count` copies of this machine, each with the measured cost and the given memory.
pub(crate) fn local_copies(
    count: usize,
    threads: u32,
    memory: u64,
    cost: transport::discovery::LayerCost,
    sha256: &str,
) -> anyhow::Result<Fleet> {
    if count == 0 {
        bail!("--devices must be at least 1");
    }
    let mut graph = DeviceGraph::new();
    for i in 1..=count {
        graph.upsert_device(Device {
            id: format!("local-{i}"),
            memory_bytes: memory,
            threads,
            decode_ms_per_layer: cost.decode_ms,
            prefill_ms_per_layer: cost.prefill_ms_per_token,
            model_sha256: Some(sha256.to_owned()),
        })?;
    }
    Ok(Fleet {
        graph,
        head: Some("local-1".to_owned()),
        default_link: None,
        source: format!("{count} simulated copies of this machine (measured)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_fleet_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet-hetero.json");
        let fleet = from_file(&path, "m").expect("example fleet");
        assert_eq!(fleet.graph.len(), 3);
        assert!(fleet.head.is_some());
        assert!(fleet
            .graph
            .devices()
            .all(|d| d.holds("m") && d.memory_bytes > 0));
    }

    #[test]
    fn bad_fleet_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("shoal-fleet-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let bad = [
            r#"{"devices": [{"id": "a", "memory": "lots", "decode_ms_per_layer": 1}]}"#,
            r#"{"devices": [{"id": "a", "memory": 1, "decode_ms_per_layer": -1}]}"#,
            r#"{"head": "z", "devices": [{"id": "a", "memory": 1, "decode_ms_per_layer": 1}]}"#,
            r#"{"devices": [], "links": [{"a": "a", "b": "b", "rtt_ms": 1, "bandwidth_mbps": 1}]}"#,
            r#"{"devices": [{"id": "a", "memry": 1, "decode_ms_per_layer": 1}]}"#,
        ];
        for (i, text) in bad.iter().enumerate() {
            let path = dir.join(format!("bad{i}.json"));
            std::fs::write(&path, text).expect("write");
            assert!(from_file(&path, "m").is_err(), "{text}");
        }
    }
}

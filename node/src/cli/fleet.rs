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
    /// Device that feeds tokens and samples (it serves the API); the first device when
    /// absent.
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
    /// Whether it serves the API (and so holds a head); only the head when absent.
    #[serde(default)]
    pub(crate) serves_api: Option<bool>,
    /// Its process overhead besides weights and KV, bytes or a size ("24MiB"); the
    /// scheduler's default when absent.
    #[serde(default)]
    pub(crate) overhead: Option<Size>,
    /// Measured milliseconds of the whole output product per token; estimated from the
    /// layer cost when absent.
    #[serde(default)]
    pub(crate) head_ms: Option<f64>,
    /// Cores its CPU quota allows, if it has one.
    #[serde(default)]
    pub(crate) cpu_quota: Option<f64>,
    /// That quota's period in milliseconds (100 when absent).
    #[serde(default)]
    pub(crate) cpu_period_ms: Option<f64>,
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

/// A measured link between two devices of a fleet file: both directions, or `a` to `b` only
/// with `one_way`; `down` marks it unusable (no measurement needed then).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkEntry {
    pub(crate) a: String,
    pub(crate) b: String,
    #[serde(default)]
    pub(crate) rtt_ms: Option<f64>,
    #[serde(default)]
    pub(crate) bandwidth_mbps: Option<f64>,
    #[serde(default)]
    pub(crate) one_way: bool,
    #[serde(default)]
    pub(crate) down: bool,
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
    let head = match &file.head {
        Some(h) if !file.devices.iter().any(|d| &d.id == h) => {
            bail!("head {h} is not a device of the fleet")
        }
        Some(h) => Some(h.clone()),
        None => file.devices.first().map(|d| d.id.clone()),
    };
    let mut graph = DeviceGraph::new();
    for d in &file.devices {
        let size = |s: &Size, what: &str| {
            s.bytes()
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("device {}: {what}", d.id))
        };
        let overhead = match &d.overhead {
            Some(o) => size(o, "overhead")?,
            None => scheduler::DEFAULT_OVERHEAD_BYTES,
        };
        graph.upsert_device(Device {
            threads: d.threads,
            serves_api: d.serves_api.unwrap_or(head.as_ref() == Some(&d.id)),
            overhead_bytes: overhead,
            head_ms: d.head_ms,
            cpu_quota: d.cpu_quota,
            cpu_period_ms: d.cpu_period_ms,
            ..Device::new(
                d.id.clone(),
                size(&d.memory, "memory")?,
                d.decode_ms_per_layer,
                d.prefill_ms_per_layer.unwrap_or(d.decode_ms_per_layer),
                d.holds_model.unwrap_or(true).then(|| sha256.to_owned()),
            )
        })?;
    }
    for l in &file.links {
        if l.down {
            graph.set_link_down(&l.a, &l.b)?;
            continue;
        }
        let (Some(rtt_ms), Some(bandwidth_mbps)) = (l.rtt_ms, l.bandwidth_mbps) else {
            bail!(
                "link {} - {}: rtt_ms and bandwidth_mbps are needed unless it is down",
                l.a,
                l.b
            );
        };
        let link = LinkSpec {
            rtt_ms,
            bandwidth_mbps,
        }
        .link();
        if l.one_way {
            graph.set_one_way_link(&l.a, &l.b, link)?;
        } else {
            graph.set_link(&l.a, &l.b, link)?;
        }
    }
    Ok(Fleet {
        graph,
        head,
        default_link: file.default_link.map(LinkSpec::link),
        source: format!("fleet file {}", path.display()),
    })
}

/// The members of a running cluster. Members that have not measured themselves yet are left
/// out (the planner cannot price them); the view carries no prefill figure, so decode stands
/// in for it, nor overheads, quota periods or links, so those are the defaults.
pub(crate) fn from_view(view: &ClusterView, sha256: &str, url: &str) -> anyhow::Result<Fleet> {
    let mut graph = DeviceGraph::new();
    let mut unmeasured = 0;
    for m in &view.members {
        let Some(decode) = m.decode_ms_per_layer else {
            unmeasured += 1;
            continue;
        };
        graph.upsert_device(Device {
            threads: m.threads,
            serves_api: m.api_addr.is_some(),
            ..Device::new(
                m.peer_id.clone(),
                m.memory_budget_bytes,
                decode,
                decode,
                m.holds_model.then(|| sha256.to_owned()),
            )
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
        // Like `scripts/demo`: the first copy serves the API, the others run layers only.
        graph.upsert_device(Device {
            threads,
            serves_api: i == 1,
            ..Device::new(
                format!("local-{i}"),
                memory,
                cost.decode_ms,
                cost.prefill_ms_per_token,
                Some(sha256.to_owned()),
            )
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
        // Only the head serves the API unless a device says otherwise.
        let serving: Vec<&str> = fleet
            .graph
            .devices()
            .filter(|d| d.serves_api)
            .map(|d| d.id.as_str())
            .collect();
        assert_eq!(serving, [fleet.head.as_deref().unwrap()]);
    }

    #[test]
    fn links_may_be_one_way_or_down() {
        let dir = std::env::temp_dir().join(format!("shoal-fleet-links-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("links.json");
        let text = r#"{"devices": [
            {"id": "a", "memory": "1GiB", "decode_ms_per_layer": 1, "overhead": "20MiB"},
            {"id": "b", "memory": "1GiB", "decode_ms_per_layer": 1, "serves_api": true},
            {"id": "c", "memory": "1GiB", "decode_ms_per_layer": 1}],
            "links": [{"a": "a", "b": "b", "rtt_ms": 2, "bandwidth_mbps": 8, "one_way": true},
                      {"a": "b", "b": "c", "down": true}]}"#;
        std::fs::write(&path, text).expect("write");
        let fleet = from_file(&path, "m").expect("fleet");
        let g = &fleet.graph;
        assert_eq!(g.link("a", "b").map(|l| l.bandwidth_bytes_per_s), Some(1e6));
        assert_eq!(g.link("b", "a"), None);
        assert_eq!(g.link_state("c", "b"), Some(scheduler::LinkState::Down));
        assert_eq!(g.device("a").map(|d| d.overhead_bytes), Some(20 << 20));
        assert!(
            g.device("a").is_some_and(|d| d.serves_api),
            "the head serves"
        );
        assert!(g.device("b").is_some_and(|d| d.serves_api));
        assert!(g.device("c").is_some_and(|d| !d.serves_api));
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
            r#"{"devices": [{"id": "a", "memory": 1, "decode_ms_per_layer": 1, "overhead": "x"}]}"#,
            r#"{"devices": [{"id": "a", "memory": 1, "decode_ms_per_layer": 1, "cpu_quota": 0}]}"#,
            r#"{"devices": [{"id": "a", "memory": 1, "decode_ms_per_layer": 1},
                {"id": "b", "memory": 1, "decode_ms_per_layer": 1}],
                "links": [{"a": "a", "b": "b", "rtt_ms": 1}]}"#,
        ];
        for (i, text) in bad.iter().enumerate() {
            let path = dir.join(format!("bad{i}.json"));
            std::fs::write(&path, text).expect("write");
            assert!(from_file(&path, "m").is_err(), "{text}");
        }
    }
}

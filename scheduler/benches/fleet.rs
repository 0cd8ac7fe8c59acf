//! A simulated fleet shared by the planner bench and the large-fleet test: 1,000 devices in
//! 20 sites of 50, full mesh inside a site, cross-site hops priced by the default link, and
//! an 80-layer ~70B-class Q4 model. Deterministic (fixed-seed xorshift).

use scheduler::{Device, DeviceGraph, Link, ModelProfile, PlanRequest, PlannerConfig};

/// Devices in the fleet.
pub const DEVICES: usize = 1_000;
const SITES: usize = 20;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (self.next() % 1_000_000) as f64 / 1_000_000.0 * (hi - lo)
    }
}

/// An 80-layer model of ~70B class at 4.5 bits/weight.
pub fn model() -> ModelProfile {
    ModelProfile {
        sha256: "llama-80".into(),
        n_layers: 80,
        bytes_per_layer: 480_000_000,
        layer_bytes: Vec::new(),
        embedding_bytes: 590_000_000,
        head_bytes: Some(590_000_000),
        head_cost_layers: 590.0 / 480.0,
        kv_bytes_per_token_per_layer: 4_096,
        context_tokens: 4_096,
        hidden_bytes_per_token: 8_192 * 4,
        vocab_size: 128_256,
    }
}

/// The fleet graph; every 10th device holds a different model and must get no layers.
pub fn fleet() -> DeviceGraph {
    let mut rng = XorShift(0x5eed_1234_abcd_9876);
    let mut g = DeviceGraph::new();
    for i in 0..DEVICES {
        let threads = 1 + (rng.next() % 8) as u32;
        let per_layer = rng.range(8.0, 24.0) / f64::from(threads);
        let gib = 2 + rng.next() % 15;
        let sha = if i % 10 == 9 { "other" } else { "llama-80" };
        g.upsert_device(Device {
            threads,
            ..Device::new(
                format!("peer-{i:04}"),
                gib << 30,
                per_layer,
                per_layer / 8.0,
                Some(sha.into()),
            )
        })
        .expect("valid device");
    }
    let per_site = DEVICES / SITES;
    for site in 0..SITES {
        for a in 0..per_site {
            for b in a + 1..per_site {
                let link = Link {
                    rtt_ms: rng.range(0.2, 2.0),
                    bandwidth_bytes_per_s: rng.range(5e7, 1.2e8),
                };
                let ia = format!("peer-{:04}", site * per_site + a);
                let ib = format!("peer-{:04}", site * per_site + b);
                g.set_link(&ia, &ib, link).expect("valid link");
            }
        }
    }
    g
}

/// A request with cross-site hops priced as a 30 ms / 10 MB/s WAN link.
pub fn request(objective: scheduler::Objective) -> PlanRequest {
    let mut r = PlanRequest::new(model());
    r.objective = objective;
    r.head_node = Some("peer-0000".into());
    r.config = PlannerConfig {
        default_link: Some(Link {
            rtt_ms: 30.0,
            bandwidth_bytes_per_s: 1e7,
        }),
        ..PlannerConfig::default()
    };
    r
}

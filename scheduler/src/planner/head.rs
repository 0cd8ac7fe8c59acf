//! Where the output product lives: whole on every device that serves the API, or split by
//! vocabulary rows over several devices.
//!
//! A split head is placed after the layers: the layer search runs with some memory kept
//! free on each device for slices (a `Layout`), then the rows go where they finish
//! soonest (`water_fill`): for one stream, rows go to the devices whose hops plus share of
//! the product end first; for many, to the least busy. Which reserve works best depends on
//! the fleet, so the planner tries a few (`reserves`) and keeps the cheapest plan; when
//! none fits, `rescue.rs` derives reserves from where the layers left too little room.

use std::collections::HashMap;

use crate::graph::Device;
use crate::plan::Objective;
use crate::planner::problem::resolve_link;
use crate::planner::PlanRequest;
use crate::DeviceGraph;

/// Where the output product lives in a plan being priced.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Placement<'a> {
    /// Every head holder holds it whole.
    Whole,
    /// Split over these devices, this many vocabulary rows each, in vocabulary order.
    Sliced(Vec<(&'a Device, u32)>),
}

/// Whether `device` holds a head: it serves the API with this model, or it is the head node.
pub(crate) fn is_holder(req: &PlanRequest, device: &Device) -> bool {
    (device.serves_api && req.eligible(device)) || req.head_node.as_deref() == Some(&device.id)
}

/// Every device that holds a head, in graph order.
pub(crate) fn holders<'g>(graph: &'g DeviceGraph, req: &PlanRequest) -> Vec<&'g Device> {
    graph.devices().filter(|d| is_holder(req, d)).collect()
}

/// Bytes a device has besides its process overhead.
pub(crate) fn free_bytes(device: &Device) -> u64 {
    device.memory_bytes.saturating_sub(device.overhead_bytes)
}

/// What devices keep besides their layers while the layers are searched.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    /// Head holders hold the whole output product.
    pub(crate) whole: bool,
    /// Bytes kept free for vocabulary slices, by device id.
    pub(crate) reserve: HashMap<String, u64>,
    /// Busy ms per token slices are expected to add to a device, by id.
    pub(crate) busy: HashMap<String, f64>,
}

impl Layout {
    pub(crate) fn whole() -> Self {
        Self {
            whole: true,
            reserve: HashMap::new(),
            busy: HashMap::new(),
        }
    }

    pub(crate) fn sliced(reserve: HashMap<String, u64>) -> Self {
        Self {
            whole: false,
            reserve,
            busy: HashMap::new(),
        }
    }

    /// Whether this is the split layout that keeps no memory free: layers first, rows in
    /// what they leave.
    pub(crate) fn is_layers_first(&self) -> bool {
        !self.whole && self.reserve.is_empty()
    }

    /// The layout that keeps `plan`'s slices where they are: their memory reserved and
    /// their work counted on their devices.
    pub(crate) fn around(plan: &crate::plan::Plan, req: &PlanRequest) -> Self {
        let mut layout = Self::sliced(HashMap::new());
        for s in &plan.slices {
            let rows = s.rows.end - s.rows.start;
            *layout.reserve.entry(s.device.clone()).or_insert(0) += req.model.slice_bytes(rows);
            *layout.busy.entry(s.device.clone()).or_insert(0.0) += s.busy_ms;
        }
        layout
    }

    /// Bytes `device` has left for layers and their KV.
    pub(crate) fn free_for_layers(&self, req: &PlanRequest, device: &Device) -> u64 {
        let head = if self.whole && is_holder(req, device) {
            req.model.output_bytes()
        } else {
            0
        };
        let reserve = self.reserve.get(&device.id).copied().unwrap_or(0);
        free_bytes(device)
            .saturating_sub(head)
            .saturating_sub(reserve)
    }

    /// The whole output product's milliseconds on the head node, for one stream and under
    /// load (0 when split or headless).
    pub(crate) fn whole_head_ms(&self, graph: &DeviceGraph, req: &PlanRequest) -> (f64, f64) {
        if !self.whole {
            return (0.0, 0.0);
        }
        let Some(head) = req.head_node.as_deref().and_then(|h| graph.device(h)) else {
            return (0.0, 0.0);
        };
        let slowdown = req.slowdown.get(&head.id).copied().unwrap_or(1.0);
        let work = head.head_decode_ms(req.model.head_cost_layers) * slowdown;
        (head.one_stream_ms(work), head.sustained_ms(work))
    }

    /// Whether every head holder can hold the whole output product at all.
    pub(crate) fn holders_fit(graph: &DeviceGraph, req: &PlanRequest) -> bool {
        holders(graph, req)
            .iter()
            .all(|d| free_bytes(d) >= req.model.output_bytes())
    }
}

/// A device that may take vocabulary rows, and what they cost on it.
#[derive(Debug, Clone)]
pub(crate) struct Seat<'a> {
    pub(crate) device: &'a Device,
    /// Rows its free memory holds.
    pub(crate) cap: u32,
    /// Milliseconds before its first row counts: its hops to and from the head (latency),
    /// or its other work per token (throughput).
    pub(crate) fixed_ms: f64,
    /// Milliseconds per row.
    pub(crate) row_ms: f64,
    /// The least a seat with any row costs: its links' busy time per token (throughput).
    pub(crate) floor_ms: f64,
}

impl Seat<'_> {
    /// What the seat costs with `rows` rows (at least one).
    fn finish(&self, rows: u32) -> f64 {
        (self.fixed_ms + f64::from(rows) * self.row_ms).max(self.floor_ms)
    }
}

/// The devices that may hold slices, with `used` bytes already taken on each (by layers)
/// and `busy` ms of other work: eligible devices the head reaches both ways, and the head.
pub(crate) fn seats<'g>(
    graph: &'g DeviceGraph,
    req: &PlanRequest,
    used: &HashMap<&str, (u64, f64)>,
) -> Vec<Seat<'g>> {
    let model = &req.model;
    let Some(head) = req.head_node.as_deref() else {
        return Vec::new();
    };
    let row_bytes = model.row_bytes().max(1);
    let vocab = f64::from(model.vocab_size);
    graph
        .devices()
        .filter(|d| req.eligible(d))
        .filter_map(|d| {
            let (hops, links) = if d.id == head {
                (0.0, 0.0)
            } else {
                let there = resolve_link(graph, req, head, &d.id)?;
                let back = resolve_link(graph, req, &d.id, head)?;
                let (hidden, result) =
                    (model.hidden_bytes_per_token, req.config.slice_result_bytes);
                (
                    there.hop_ms(hidden) + back.hop_ms(result),
                    there.transfer_ms(hidden).max(back.transfer_ms(result)),
                )
            };
            let (taken, busy) = used.get(d.id.as_str()).copied().unwrap_or((0, 0.0));
            let rows = free_bytes(d).saturating_sub(taken) / row_bytes;
            let cap = u32::try_from(rows.min(u64::from(model.vocab_size))).unwrap_or(0);
            let slowdown = req.slowdown.get(&d.id).copied().unwrap_or(1.0);
            let row_ms = d.head_decode_ms(model.head_cost_layers) * slowdown / vocab;
            let (fixed_ms, floor_ms, row_ms) = match req.objective {
                Objective::Latency => (hops, 0.0, row_ms),
                Objective::Throughput => (busy, links, d.sustained_ms(row_ms)),
            };
            (cap > 0).then_some(Seat {
                device: d,
                cap,
                fixed_ms,
                row_ms,
                floor_ms,
            })
        })
        .collect()
}

/// What `stages`' layers take on each of their devices: bytes (with KV) and busy ms per
/// token, the `used` that [`seats`] takes.
pub(crate) fn layer_use<'s>(
    req: &PlanRequest,
    stages: &[(&'s Device, u32)],
) -> HashMap<&'s str, (u64, f64)> {
    let mut used = HashMap::new();
    let mut start = 0u32;
    for &(device, n) in stages {
        let slowdown = req.slowdown.get(&device.id).copied().unwrap_or(1.0);
        let bytes = req.model.range_bytes(start..start + n);
        let busy = device.sustained_ms(f64::from(n) * device.decode_ms_per_layer * slowdown);
        used.insert(device.id.as_str(), (bytes, busy));
        start += n;
    }
    used
}

/// Rows per seat that minimize the latest finish over the seats used, or `None` when they
/// cannot hold `rows` in all.
///
/// Greedy by next finish is optimal for a max of increasing costs; it starts from every
/// row that finishes by a level found by bisection (rows finishing no later are all in
/// any greedy prefix), so only the last few rows are placed one by one.
pub(crate) fn water_fill(seats: &[Seat<'_>], rows: u32) -> Option<Vec<u32>> {
    let room = seats.iter().fold(0u64, |a, s| a + u64::from(s.cap));
    if room < u64::from(rows) {
        return None;
    }
    let at_level = |t: f64| -> Vec<u32> {
        seats
            .iter()
            .map(|s| {
                if t < s.fixed_ms || t < s.floor_ms {
                    0
                } else if s.row_ms <= 0.0 {
                    s.cap
                } else {
                    let n = ((t - s.fixed_ms) / s.row_ms).floor();
                    // n >= 0 here; the min keeps it within the cap.
                    (n.min(f64::from(s.cap))) as u32
                }
            })
            .collect()
    };
    let count = |v: &[u32]| v.iter().fold(0u64, |a, &n| a + u64::from(n));
    let (mut lo, mut hi) = (
        -1.0f64,
        seats.iter().map(|s| s.finish(s.cap)).fold(0.0, f64::max),
    );
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if mid <= lo || mid >= hi {
            break;
        }
        if count(&at_level(mid)) >= u64::from(rows) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let mut taken = if lo < 0.0 {
        vec![0; seats.len()]
    } else {
        at_level(lo)
    };
    let mut left = u64::from(rows) - count(&taken).min(u64::from(rows));
    while left > 0 {
        let mut best: Option<(usize, f64)> = None;
        for (i, s) in seats.iter().enumerate() {
            if taken[i] < s.cap {
                let next = s.finish(taken[i] + 1);
                if best.is_none_or(|b| next < b.1) {
                    best = Some((i, next));
                }
            }
        }
        let (i, _) = best?;
        // A seat whose rows cost nothing takes all it can at once.
        let add = if seats[i].row_ms <= 0.0 {
            u64::from(seats[i].cap - taken[i]).min(left)
        } else {
            1
        };
        // add <= cap - taken, a u32.
        taken[i] += add as u32;
        left -= add;
    }
    Some(taken)
}

/// Memory to keep free for slices while searching layers, one map per strategy: none
/// (layers first, slices in what is left); each seat's share of the head in proportion to
/// its free memory; where the rows would go if no device ran layers.
pub(crate) fn reserves(graph: &DeviceGraph, req: &PlanRequest) -> Vec<HashMap<String, u64>> {
    let model = &req.model;
    let seats = seats(graph, req, &HashMap::new());
    let mut out = vec![HashMap::new()];
    let free: u64 = seats.iter().map(|s| free_bytes(s.device)).sum();
    if free == 0 {
        return out;
    }
    let head = u128::from(model.output_bytes());
    let proportional = seats
        .iter()
        .map(|s| {
            let share = head * u128::from(free_bytes(s.device)) / u128::from(free);
            // share <= head, a u64; one row of slack for the rounding of rows.
            let bytes = u64::try_from(share).unwrap_or(u64::MAX);
            (s.device.id.clone(), bytes.saturating_add(model.row_bytes()))
        })
        .collect();
    out.push(proportional);
    if let Some(rows) = water_fill(&seats, model.vocab_size) {
        let fastest = seats
            .iter()
            .zip(rows)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| (s.device.id.clone(), model.slice_bytes(n)))
            .collect();
        out.push(fastest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The latest finish of a fill (what the head waits for, or the busiest seat).
    fn fill_ms(seats: &[Seat<'_>], rows: &[u32]) -> f64 {
        seats
            .iter()
            .zip(rows)
            .filter(|(_, &n)| n > 0)
            .map(|(s, &n)| s.finish(n))
            .fold(0.0, f64::max)
    }

    fn seat(device: &Device, cap: u32, fixed_ms: f64, row_ms: f64) -> Seat<'_> {
        Seat {
            device,
            cap,
            fixed_ms,
            row_ms,
            floor_ms: 0.0,
        }
    }

    /// Every way to put `rows` on the seats within their caps, and the best latest finish.
    fn brute(seats: &[Seat<'_>], rows: u32) -> Option<f64> {
        fn go(seats: &[Seat<'_>], i: usize, left: u32, worst: f64, best: &mut Option<f64>) {
            if i == seats.len() {
                if left == 0 && best.is_none_or(|b| worst < b) {
                    *best = Some(worst);
                }
                return;
            }
            for n in 0..=seats[i].cap.min(left) {
                let w = if n > 0 {
                    worst.max(seats[i].finish(n))
                } else {
                    worst
                };
                go(seats, i + 1, left - n, w, best);
            }
        }
        let mut best = None;
        go(seats, 0, rows, 0.0, &mut best);
        best
    }

    #[test]
    fn water_fill_matches_brute_force() {
        let d = Device::new("d", 0, 1.0, 1.0, None);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..500 {
            let k = 1 + next(4) as usize;
            let seats: Vec<Seat<'_>> = (0..k)
                .map(|_| {
                    let row_ms = if next(5) == 0 {
                        0.0
                    } else {
                        next(7) as f64 * 0.5
                    };
                    let mut s = seat(&d, next(6) as u32, next(4) as f64 * 0.75, row_ms);
                    s.floor_ms = next(3) as f64 * 1.5;
                    s
                })
                .collect();
            let rows = 1 + next(9) as u32;
            let got = water_fill(&seats, rows);
            match (brute(&seats, rows), &got) {
                (None, None) => {}
                (Some(best), Some(fill)) => {
                    assert_eq!(fill.iter().sum::<u32>(), rows);
                    assert!(fill.iter().zip(&seats).all(|(n, s)| *n <= s.cap));
                    let ms = fill_ms(&seats, fill);
                    assert!((ms - best).abs() < 1e-9, "{ms} vs {best} for {seats:?}");
                }
                (want, _) => panic!("{want:?} vs {got:?} for {seats:?} and {rows} rows"),
            }
        }
    }

    #[test]
    fn water_fill_spreads_a_large_vocabulary() {
        let d = Device::new("d", 0, 1.0, 1.0, None);
        let seats = [
            seat(&d, 200_000, 0.0, 1e-4),
            seat(&d, 200_000, 0.5, 1e-4),
            seat(&d, 100_000, 0.5, 2e-4),
        ];
        let fill = water_fill(&seats, 262_144).unwrap();
        assert_eq!(fill.iter().sum::<u32>(), 262_144);
        let ms = fill_ms(&seats, &fill);
        // Continuous optimum: T with T/1e-4 + 2 (T-0.5)/1e-4 ... all three at one level.
        let t = (262_144.0 * 1e-4 + 0.5 + 0.25) / 2.5;
        assert!((ms - t).abs() < 1e-3, "{ms} vs {t}: {fill:?}");
    }
}

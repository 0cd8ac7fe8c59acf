//! Renders a [`ClusterView`] for `shoal status`: a table of nodes, the pipeline path, the
//! plan's figures, and what is wrong when the cluster is not ready. Pure: view in, text out.

use std::fmt::Write as _;

use shoal::cluster::profile::format_size;
use shoal::cluster::{ClusterState, ClusterView, MemberState};

/// Exit code when the cluster serves.
pub(crate) const EXIT_READY: i32 = 0;
/// Exit code when the node answered but the cluster is not ready.
pub(crate) const EXIT_NOT_READY: i32 = 1;
/// Exit code when the node could not be reached or did not answer with a view.
pub(crate) const EXIT_UNREACHABLE: i32 = 2;

/// What `shoal status` exits with for this view.
pub(crate) fn exit_code(view: &ClusterView) -> i32 {
    if view.state.is_healthy() {
        EXIT_READY
    } else {
        EXIT_NOT_READY
    }
}

pub(crate) use shoal::events::short_id;

/// The whole status screen.
pub(crate) fn render(view: &ClusterView) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write(&mut out, view);
    out
}

fn write(out: &mut String, view: &ClusterView) -> std::fmt::Result {
    writeln!(
        out,
        "cluster {}: model {} ({} layers, sha256 {}), asked {}, coordinator {}",
        state_name(view.state),
        view.model.name,
        view.model.n_layers,
        view.model.sha256.get(..12).unwrap_or(&view.model.sha256),
        short_id(&view.node),
        view.coordinator
            .as_deref()
            .map(short_id)
            .unwrap_or_else(|| "none".to_owned()),
    )?;
    if let Some(problem) = &view.problem {
        writeln!(out, "problem: {problem}")?;
    } else if !view.state.is_healthy() {
        writeln!(out, "problem: cluster is {}", state_name(view.state))?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "  {:<10} {:<22} {:>7} {:>5} {:>10} {:>7} {:<8} {:>9} {:>5}  platform",
        "node", "address", "threads", "cpu", "memory", "layers", "state", "ms/layer", "model",
    )?;
    for m in &view.members {
        let layers = m
            .layers
            .map(|[a, b]| format!("{a}..{b}"))
            .unwrap_or_else(|| "-".to_owned());
        let decode = m
            .decode_ms_per_layer
            .map(|d| format!("{d:.3}"))
            .unwrap_or_else(|| "-".to_owned());
        // The cores a CPU quota allows; "-" when the node has none.
        let cpu = m
            .cpu_quota
            .map(|c| format!("{c:.2}"))
            .unwrap_or_else(|| "-".to_owned());
        let mut state = member_state_name(m.state).to_owned();
        if m.state == MemberState::Serving && !m.ready {
            state.push('?');
        }
        let me = if m.peer_id == view.node { "*" } else { " " };
        // A node without the API holds no head and receives no replies.
        let address = if m.serves_api || m.state == MemberState::Gone {
            m.data_addr.clone()
        } else {
            "(no API)".to_owned()
        };
        // Architecture and kernel sets, e.g. "aarch64 neon+neon-dotprod"; "-" from nodes
        // that do not advertise them.
        let platform = if m.arch.is_empty() {
            "-".to_owned()
        } else {
            format!("{} {}", m.arch, m.kernels)
        };
        writeln!(
            out,
            "{me} {:<10} {:<22} {:>7} {:>5} {:>10} {:>7} {:<8} {:>9} {:>5}  {platform}",
            short_id(&m.peer_id),
            address,
            m.threads,
            cpu,
            format_size(m.memory_budget_bytes),
            layers,
            state,
            decode,
            if m.holds_model { "yes" } else { "no" }
        )?;
    }
    writeln!(out)?;
    match &view.plan {
        None => writeln!(out, "no active plan")?,
        Some(plan) => {
            // Each hop shows the round-trip time its sender measured, when it has one.
            let hop = |from: &str, to: &str| {
                view.links
                    .iter()
                    .find(|l| l.a == from && l.b == to)
                    .map_or("->".to_owned(), |l| format!("-({:.1} ms)->", l.rtt_ms))
            };
            let mut path = format!("head {}", short_id(&plan.head));
            let mut from = plan.head.as_str();
            for s in &plan.stages {
                let _ = write!(
                    path,
                    " {} {} [{}..{})",
                    hop(from, &s.peer_id),
                    short_id(&s.peer_id),
                    s.layers[0],
                    s.layers[1]
                );
                from = &s.peer_id;
            }
            let _ = write!(
                path,
                " {} head {}",
                hop(from, &plan.head),
                short_id(&plan.head)
            );
            writeln!(out, "pipeline (epoch {}): {path}", plan.epoch)?;
            let measured = plan
                .measured_ms_per_token
                .map(|m| format!("{m:.2} ms/token"))
                .unwrap_or_else(|| "no tokens yet".to_owned());
            writeln!(
                out,
                "predicted {:.2} ms/token ({:.1} tok/s), measured {measured}",
                plan.predicted_ms_per_token,
                per_second(plan.predicted_ms_per_token),
            )?;
        }
    }
    writeln!(
        out,
        "throughput {:.1} tok/s, {} replan(s)",
        view.tokens_per_s, view.replans
    )?;
    if let Some(a) = view.admission {
        writeln!(
            out,
            "requests: {} running of {}, {} waiting (queue {})",
            a.running, a.max_requests, a.waiting, a.max_queue
        )?;
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let recent = &view.events[view.events.len().saturating_sub(RECENT_EVENTS)..];
    if !recent.is_empty() {
        writeln!(out, "recent events:")?;
    }
    for e in recent {
        let ago = now_ms.saturating_sub(e.at_unix_ms) as f64 / 1e3;
        writeln!(out, "  {:>7} ago  {}", format_ago(ago), e.what)?;
    }
    Ok(())
}

/// Events the table shows (the API has more).
const RECENT_EVENTS: usize = 8;

fn format_ago(seconds: f64) -> String {
    match seconds {
        s if s < 60.0 => format!("{s:.1}s"),
        s if s < 3600.0 => format!("{:.0}m", s / 60.0),
        s => format!("{:.1}h", s / 3600.0),
    }
}

fn per_second(ms: f64) -> f64 {
    if ms > 0.0 {
        1000.0 / ms
    } else {
        0.0
    }
}

fn state_name(s: ClusterState) -> &'static str {
    match s {
        ClusterState::Ready => "ready",
        ClusterState::Forming => "forming",
        ClusterState::Degraded => "degraded",
        ClusterState::Unplaceable => "unplaceable",
    }
}

fn member_state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Serving => "serving",
        MemberState::Loading => "loading",
        MemberState::Idle => "idle",
        MemberState::Gone => "gone",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shoal::cluster::{MemberView, ModelSummary, PlanView, StageView};

    fn member(id: &str, layers: Option<[u32; 2]>, state: MemberState) -> MemberView {
        MemberView {
            peer_id: id.into(),
            data_addr: "10.0.0.2:7000".into(),
            api_addr: None,
            stage_addr: None,
            threads: 4,
            cpu_quota: None,
            memory_budget_bytes: 512 << 20,
            serves_api: true,
            overhead_bytes: Some(16 << 20),
            holds_model: true,
            decode_ms_per_layer: Some(0.3),
            epoch: 3,
            ready: true,
            layers,
            state,
            version: "0.1.0".into(),
            arch: "x86_64".into(),
            kernels: "avx512+avx2".into(),
        }
    }

    /// A ready two-stage cluster, as a node would serve it.
    pub(crate) fn fixture() -> ClusterView {
        let a = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaa1111";
        let b = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBbbbb2222";
        ClusterView {
            node: a.into(),
            model: ModelSummary {
                name: "SmolLM2 135M".into(),
                sha256: "0123456789abcdef".repeat(4),
                n_layers: 30,
            },
            coordinator: Some(a.into()),
            state: ClusterState::Ready,
            problem: None,
            members: vec![
                member(a, Some([0, 18]), MemberState::Serving),
                member(b, Some([18, 30]), MemberState::Serving),
            ],
            plan: Some(PlanView {
                epoch: 3,
                head: a.into(),
                stages: vec![
                    StageView {
                        peer_id: a.into(),
                        layers: [0, 18],
                        predicted_ms: 5.4,
                    },
                    StageView {
                        peer_id: b.into(),
                        layers: [18, 30],
                        predicted_ms: 3.6,
                    },
                ],
                predicted_ms_per_token: 10.0,
                measured_ms_per_token: Some(11.5),
            }),
            tokens_per_s: 42.0,
            replans: 1,
            events: Vec::new(),
            links: vec![shoal::cluster::LinkView {
                a: a.into(),
                b: b.into(),
                rtt_ms: 2.5,
                bandwidth_mbps: None,
                measured_at: 0,
            }],
            admission: Some(shoal::cluster::AdmissionView {
                running: 12,
                max_requests: 12,
                waiting: 3,
                max_queue: 256,
            }),
        }
    }

    #[test]
    fn ready_view_renders_table_and_path() {
        let v = fixture();
        let text = render(&v);
        assert_eq!(exit_code(&v), EXIT_READY);
        assert!(
            text.starts_with("cluster ready: model SmolLM2 135M (30 layers"),
            "{text}"
        );
        assert!(text.contains("…aaaa1111"), "{text}");
        assert!(text.contains("0..18") && text.contains("18..30"), "{text}");
        assert!(
            text.contains("pipeline (epoch 3): head …aaaa1111 -> …aaaa1111 [0..18) -(2.5 ms)-> …bbbb2222 [18..30) -> head …aaaa1111"),
            "{text}"
        );
        assert!(
            text.contains("predicted 10.00 ms/token (100.0 tok/s), measured 11.50"),
            "{text}"
        );
        assert!(
            text.contains("requests: 12 running of 12, 3 waiting (queue 256)"),
            "{text}"
        );
        assert!(text.contains("512.0 MiB"), "{text}");
        assert!(!text.contains("problem"), "{text}");
    }

    #[test]
    fn a_cpu_quota_is_shown_in_cores() {
        let mut v = fixture();
        v.members[1].cpu_quota = Some(0.05);
        let text = render(&v);
        let row = |tail: &str| {
            text.lines()
                .find(|l| l.contains(tail))
                .unwrap_or_else(|| panic!("no row for {tail} in {text}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let header: Vec<&str> = text
            .lines()
            .find(|l| l.contains("threads"))
            .expect("a header")
            .split_whitespace()
            .collect();
        let column = header
            .iter()
            .position(|&h| h == "cpu")
            .expect("a cpu column");
        // The first row starts with "*" (this node), which the header does not have.
        assert_eq!(row("…aaaa1111 ")[column + 1], "-", "{text}");
        assert_eq!(row("…bbbb2222 ")[column], "0.05", "{text}");
    }

    #[test]
    fn each_node_shows_its_architecture_and_kernels() {
        let mut v = fixture();
        v.members[1].arch = "aarch64".into();
        v.members[1].kernels = "neon+neon-dotprod".into();
        let text = render(&v);
        let row = |tail: &str| text.lines().find(|l| l.contains(tail)).expect("a row");
        assert!(row("…aaaa1111 ").ends_with("x86_64 avx512+avx2"), "{text}");
        assert!(
            row("…bbbb2222 ").ends_with("aarch64 neon+neon-dotprod"),
            "{text}"
        );
        assert!(text.contains(" platform"), "{text}");
        v.members[1].arch.clear();
        assert!(render(&v)
            .lines()
            .any(|l| l.contains("…bbbb2222 ") && l.ends_with(" -")));
    }

    #[test]
    fn degraded_view_explains_and_exits_1() {
        let mut v = fixture();
        v.state = ClusterState::Degraded;
        v.problem = Some("stage …bbbb2222 is gone".into());
        v.members[1].state = MemberState::Gone;
        let text = render(&v);
        assert_eq!(exit_code(&v), EXIT_NOT_READY);
        assert!(text.contains("cluster degraded"), "{text}");
        assert!(text.contains("problem: stage …bbbb2222 is gone"), "{text}");
        assert!(text.contains("gone"), "{text}");
    }

    #[test]
    fn forming_view_without_plan() {
        let mut v = fixture();
        v.state = ClusterState::Forming;
        v.plan = None;
        v.members[0].layers = None;
        v.members[0].decode_ms_per_layer = None;
        let text = render(&v);
        assert_eq!(exit_code(&v), EXIT_NOT_READY);
        assert!(text.contains("problem: cluster is forming"), "{text}");
        assert!(text.contains("no active plan"), "{text}");
    }

    #[test]
    fn the_newest_events_are_listed_with_their_age() {
        let mut v = fixture();
        assert!(!render(&v).contains("recent events"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        v.events = (0..10)
            .map(|i| shoal::events::Event {
                at_unix_ms: now - 1000 * (10 - i),
                what: format!("event {i}"),
            })
            .collect();
        let text = render(&v);
        assert!(text.contains("recent events:"), "{text}");
        assert!(
            !text.contains("event 1\n") && text.contains("event 2"),
            "{text}"
        );
        assert!(text.contains("1.0s ago  event 9"), "{text}");
    }

    #[test]
    fn short_ids_keep_the_distinct_tail() {
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id("12D3KooWxyzxyzxyz12345678"), "…12345678");
    }
}

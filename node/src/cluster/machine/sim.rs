//! A simulated cluster for the machine's tests: several machines wired together in memory,
//! a simulated clock, and a network the test can cut. Every delivery is synchronous and in
//! order, so a test's outcome depends only on its inputs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

use scheduler::ModelProfile;
use transport::discovery::{Advert, AdvertState, Keypair, LayerCost, PeerId};

use super::super::control::Assignment;
use super::super::coordinator::Placement;
use super::{Action, Cluster, Config, Input, Millis, StageReport, Tick};

pub(super) const SHA: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// A stage takes this long to load.
pub(super) const LOAD_MS: Millis = 200;
/// The replan debounce.
pub(super) const REPLAN_MS: Millis = 300;

/// One simulated node.
pub(super) struct SimNode {
    pub(super) machine: Cluster,
    /// Its stages: epoch -> (address, open sessions, decode steps, step µs, next hop).
    pub(super) stages: BTreeMap<u64, SimStage>,
    /// Peers it sees as members.
    pub(super) view: BTreeSet<PeerId>,
    pub(super) events: Vec<String>,
    pub(super) replanned: u64,
    /// Stages moved to a newer plan as they were.
    pub(super) adopted: u64,
    /// Loads in flight: (due, epoch).
    loads: Vec<(Millis, u64)>,
    /// Loads that fail.
    pub(super) failing: bool,
    pub(super) index: u16,
}

#[derive(Debug, Clone, Default)]
pub(super) struct SimStage {
    pub(super) addr: Option<SocketAddr>,
    pub(super) open: usize,
    pub(super) steps: u64,
    pub(super) step_us: Option<u64>,
    pub(super) next: Option<SocketAddr>,
}

/// The simulated cluster.
pub(super) struct Sim {
    pub(super) nodes: BTreeMap<PeerId, SimNode>,
    pub(super) now: Millis,
    /// Pairs that cannot reach each other (both directions).
    cut: BTreeSet<(PeerId, PeerId)>,
    queue: VecDeque<(PeerId, Input)>,
    next_tick: Millis,
    placement: Placement,
}

pub(super) fn profile() -> ModelProfile {
    ModelProfile {
        sha256: SHA.into(),
        n_layers: 30,
        bytes_per_layer: 3 << 20,
        embedding_bytes: 20 << 20,
        head_bytes: None,
        head_cost_layers: 6.0,
        kv_bytes_per_token_per_layer: 1536,
        context_tokens: 1024,
        hidden_bytes_per_token: 576 * 4,
        vocab_size: 49152,
        layer_bytes: Vec::new(),
    }
}

fn advert(peer: PeerId, memory_mib: u64, decode_ms: f64, index: u16) -> Advert {
    Advert {
        peer_id: peer,
        data_addr: SocketAddr::from(([10, 0, 0, index as u8], 7601)),
        threads: 1,
        memory_budget_bytes: memory_mib << 20,
        models: vec![SHA.into()],
        layer_cost: Some(LayerCost {
            decode_ms,
            prefill_ms_per_token: decode_ms / 4.0,
        }),
        version: "test".into(),
        seed_addr: None,
        platform: Default::default(),
        // Every simulated node serves the API, so each holds a head.
        state: AdvertState {
            serves_api: true,
            ..AdvertState::default()
        },
    }
}

impl Sim {
    pub(super) fn new(placement: Placement) -> Sim {
        Sim {
            nodes: BTreeMap::new(),
            now: 0,
            cut: BTreeSet::new(),
            queue: VecDeque::new(),
            next_tick: 1000,
            placement,
        }
    }

    /// Adds a node with `memory_mib` of budget and a layer cost of `decode_ms`; it meets
    /// every node it can reach. Returns its peer id.
    pub(super) fn add(&mut self, memory_mib: u64, decode_ms: f64) -> PeerId {
        let peer = Keypair::generate_ed25519().public().to_peer_id();
        self.add_peer(peer, memory_mib, decode_ms)
    }

    /// [`Sim::add`] with a given identity.
    pub(super) fn add_peer(&mut self, peer: PeerId, memory_mib: u64, decode_ms: f64) -> PeerId {
        let index = self.nodes.len() as u16 + 1;
        let advert = advert(peer, memory_mib, decode_ms, index);
        let cfg = Config {
            local: peer,
            sha256: SHA.into(),
            version: "test".into(),
            profile: profile(),
            placement: self.placement,
            replan_delay: REPLAN_MS,
            straggler: Default::default(),
        };
        let machine = Cluster::new(cfg, advert.clone(), self.now);
        let node = SimNode {
            machine,
            stages: BTreeMap::new(),
            view: BTreeSet::new(),
            events: Vec::new(),
            replanned: 0,
            adopted: 0,
            loads: Vec::new(),
            failing: false,
            index,
        };
        self.nodes.insert(peer, node);
        self.meet(peer);
        self.settle();
        peer
    }

    /// The peers sorted as the coordinator rule sorts them (string order).
    pub(super) fn by_id(&self) -> Vec<PeerId> {
        let mut ids: Vec<PeerId> = self.nodes.keys().copied().collect();
        ids.sort_by_key(|p| p.to_string());
        ids
    }

    fn reachable(&self, a: PeerId, b: PeerId) -> bool {
        a != b && !self.cut.contains(&(a, b)) && !self.cut.contains(&(b, a))
    }

    /// `peer` and every node it can reach become members of each other's views.
    fn meet(&mut self, peer: PeerId) {
        let others: Vec<PeerId> = self.nodes.keys().copied().collect();
        for other in others {
            if self.reachable(peer, other) {
                self.join_views(peer, other);
                self.join_views(other, peer);
            }
        }
    }

    fn join_views(&mut self, viewer: PeerId, member: PeerId) {
        let advert = self.nodes[&member].machine.advert.clone();
        let node = self.nodes.get_mut(&viewer).expect("node");
        if node.view.insert(member) {
            self.queue.push_back((viewer, Input::Joined(advert)));
        }
    }

    fn leave_views(&mut self, viewer: PeerId, member: PeerId) {
        if let Some(node) = self.nodes.get_mut(&viewer) {
            if node.view.remove(&member) {
                self.queue.push_back((viewer, Input::Left(member)));
            }
        }
    }

    /// Stops `peer` at once: everyone sees it leave.
    pub(super) fn kill(&mut self, peer: PeerId) {
        self.nodes.remove(&peer);
        let others: Vec<PeerId> = self.nodes.keys().copied().collect();
        for other in others {
            self.leave_views(other, peer);
        }
        self.settle();
    }

    /// Cuts `a` off from `b` (control and data).
    pub(super) fn cut(&mut self, a: PeerId, b: PeerId) {
        self.cut.insert((a, b));
        self.leave_views(a, b);
        self.leave_views(b, a);
        self.settle();
    }

    /// Heals every cut.
    pub(super) fn heal(&mut self) {
        self.cut.clear();
        let peers: Vec<PeerId> = self.nodes.keys().copied().collect();
        for p in peers {
            self.meet(p);
        }
        self.settle();
    }

    /// Feeds `input` to `peer` now.
    pub(super) fn input(&mut self, peer: PeerId, input: Input) {
        self.queue.push_back((peer, input));
        self.settle();
    }

    /// Delivers queued inputs until none is left.
    fn settle(&mut self) {
        while let Some((peer, input)) = self.queue.pop_front() {
            let Some(node) = self.nodes.get_mut(&peer) else {
                continue;
            };
            let actions = node.machine.handle(input, self.now);
            for action in actions {
                self.execute(peer, action);
            }
        }
    }

    fn execute(&mut self, from: PeerId, action: Action) {
        let now = self.now;
        let members: Vec<PeerId> = self.nodes[&from].view.iter().copied().collect();
        match action {
            Action::Publish(advert) => {
                for m in members {
                    if self.nodes.get(&m).is_some_and(|n| n.view.contains(&from)) {
                        self.queue.push_back((m, Input::Updated((*advert).clone())));
                    }
                }
            }
            Action::Broadcast(message) => {
                for m in members {
                    self.queue.push_back((
                        m,
                        Input::Control {
                            from,
                            message: message.clone(),
                        },
                    ));
                }
            }
            Action::Send(to, message) => {
                if self.reachable(from, to) && self.nodes.contains_key(&to) {
                    self.queue.push_back((to, Input::Control { from, message }));
                }
            }
            Action::LoadStage(order) => {
                let node = self.nodes.get_mut(&from).expect("node");
                node.loads.push((now + LOAD_MS, order.epoch));
            }
            Action::AdoptStage { from: old, order } => {
                let node = self.nodes.get_mut(&from).expect("node");
                node.adopted += 1;
                match node.stages.remove(&old) {
                    Some(stage) => {
                        let addr = stage.addr.expect("a running stage has an address");
                        node.stages.insert(order.epoch, stage);
                        let input = Input::StageLoaded {
                            epoch: order.epoch,
                            addr,
                        };
                        self.queue.push_back((from, input));
                    }
                    None => node.loads.push((now + LOAD_MS, order.epoch)),
                }
            }
            Action::RouteStage { epoch, next } => {
                let node = self.nodes.get_mut(&from).expect("node");
                node.stages.entry(epoch).or_default().next = Some(next);
            }
            Action::StopStage { epoch } => {
                let node = self.nodes.get_mut(&from).expect("node");
                node.stages.remove(&epoch);
                node.loads.retain(|&(_, e)| e != epoch);
            }
            Action::Event(what) => self.nodes.get_mut(&from).expect("node").events.push(what),
            Action::Replanned => self.nodes.get_mut(&from).expect("node").replanned += 1,
        }
    }

    /// Lets `ms` pass in steps of 50 ms: loads finish, deadlines fire, ticks report.
    pub(super) fn run(&mut self, ms: Millis) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 50;
            let now = self.now;
            let peers: Vec<PeerId> = self.nodes.keys().copied().collect();
            for peer in &peers {
                let node = self.nodes.get_mut(peer).expect("node");
                let due: Vec<u64> = node
                    .loads
                    .iter()
                    .filter(|(at, _)| *at <= now)
                    .map(|&(_, e)| e)
                    .collect();
                node.loads.retain(|(at, _)| *at > now);
                for epoch in due {
                    let input = if node.failing {
                        Input::StageFailed {
                            epoch,
                            error: "no weights".into(),
                        }
                    } else {
                        let addr =
                            SocketAddr::from(([10, 0, 0, node.index as u8], 9000 + epoch as u16));
                        node.stages.entry(epoch).or_default().addr = Some(addr);
                        Input::StageLoaded { epoch, addr }
                    };
                    self.queue.push_back((*peer, input));
                }
                if self.nodes[peer]
                    .machine
                    .deadline()
                    .is_some_and(|d| d <= now)
                {
                    self.queue.push_back((*peer, Input::Timer));
                }
            }
            if now >= self.next_tick {
                self.next_tick += 1000;
                for peer in &peers {
                    let stages = self.nodes[peer]
                        .stages
                        .iter()
                        .map(|(&epoch, s)| StageReport {
                            epoch,
                            open_sessions: s.open,
                            steps: s.steps,
                            step_us: s.step_us,
                        })
                        .collect();
                    let tick = Tick {
                        stages,
                        ..Tick::default()
                    };
                    self.queue.push_back((*peer, Input::Tick(tick)));
                }
            }
            self.settle();
        }
    }

    /// The active plan `peer` sees.
    pub(super) fn active(&self, peer: PeerId) -> Option<Assignment> {
        let node = self.nodes.get(&peer)?;
        node.machine.active.as_ref().map(|a| a.assignment.clone())
    }

    /// The one active plan every node sees, if they all agree on one.
    pub(super) fn agreed(&self) -> Option<Assignment> {
        let mut plans = self.nodes.keys().map(|p| self.active(*p));
        let first = plans.next()??;
        plans.all(|p| p.as_ref() == Some(&first)).then_some(first)
    }
}

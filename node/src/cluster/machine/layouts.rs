//! What a node reads off a plan's layout: its own stage, which layer runs where, and
//! whether a new plan leaves its part of the ring alike.

use super::super::control::Assignment;
use super::StageOrder;

/// Whether plan `new` runs `local`'s stage of plan `old` and every stage after it alike
/// (the same nodes with the same layers), behind the same upstream node.
pub(super) fn unchanged_tail(old: &Assignment, new: &Assignment, local: &str) -> bool {
    let (Some(k), Some(i)) = (old.stage_of(local), new.stage_of(local)) else {
        return false;
    };
    let before = |a: &Assignment, i: usize| i.checked_sub(1).map(|p| a.stages[p].peer.clone());
    before(old, k) == before(new, i)
        && old.stages.len() - k == new.stages.len() - i
        && old.stages[k..]
            .iter()
            .zip(&new.stages[i..])
            .all(|(o, n)| o.peer == n.peer && o.layers == n.layers)
}

/// This node's stage of plan `a`, if it has one.
pub(super) fn my_order(a: &Assignment, local: &str) -> Option<StageOrder> {
    let i = a.stage_of(local)?;
    Some(StageOrder {
        epoch: a.epoch,
        layers: a.stages[i].layers,
        index: i,
        last: i + 1 == a.stages.len(),
        previous: i.checked_sub(1).map(|p| a.stages[p].peer.clone()),
    })
}

/// Each layer's node in a plan.
pub(super) fn owners(a: &Assignment) -> Vec<Option<String>> {
    let n = a.stages.iter().map(|s| s.layers[1]).max().unwrap_or(0) as usize;
    let mut v = vec![None; n];
    for s in &a.stages {
        for slot in &mut v[s.layers[0] as usize..s.layers[1] as usize] {
            *slot = Some(s.peer.clone());
        }
    }
    v
}

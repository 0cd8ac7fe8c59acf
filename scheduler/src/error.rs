//! Typed errors, one enum per operation.

use thiserror::Error;

/// Why a device or link could not be added to a [`crate::DeviceGraph`].
#[derive(Debug, Clone, PartialEq, Error)]
pub enum GraphError {
    /// A cost or bandwidth was NaN, infinite or negative; the planner's arithmetic needs finite,
    /// non-negative numbers.
    #[error(
        "device {device}: {field} = {value} is not a usable measurement (finite and \
         non-negative; positive for quotas and periods)"
    )]
    InvalidMeasurement {
        /// Peer id the bad number belongs to (for a link, `a->b`).
        device: String,
        /// Name of the offending field.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A link's bandwidth was zero: nothing could ever cross it.
    #[error("link {a}->{b}: bandwidth must be positive")]
    ZeroBandwidth {
        /// One end of the link.
        a: String,
        /// The other end.
        b: String,
    },
    /// The peer id is not in the graph.
    #[error("unknown device {0}")]
    UnknownDevice(String),
    /// A link from a device to itself; a device never pays to talk to itself.
    #[error("self link on {0}")]
    SelfLink(String),
}

/// Why no plan could be produced.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PlanError {
    /// The model profile is unusable (zero layers, non-finite cost, ...).
    #[error("invalid model profile: {0}")]
    InvalidModel(&'static str),
    /// The request itself is malformed (e.g. a slowdown that is not a positive finite number).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// No device in the graph holds the model with this sha256 (and is not excluded).
    #[error("no device holds model {model_sha256}")]
    NoEligibleDevices {
        /// The model the request asked for.
        model_sha256: String,
    },
    /// The devices holding the model have less memory, after their process overheads, than
    /// the model's layers, their KV cache and one output product.
    #[error(
        "insufficient memory: the model needs {needed} bytes ({layers} of layers, {kv} of KV \
         cache, {head} of output head) but the devices holding it offer {available} after \
         their process overheads ({budget} of budget in all)"
    )]
    InsufficientMemory {
        /// `layers + kv + head`.
        needed: u64,
        /// Sum over the eligible devices of budget minus overhead.
        available: u64,
        /// Weights of all layers.
        layers: u64,
        /// KV cache of all layers for the reserved context.
        kv: u64,
        /// One output product (the least any head needs, split or whole).
        head: u64,
        /// Sum of the eligible devices' budgets.
        budget: u64,
    },
    /// A piece that cannot be divided (one layer with its KV cache) is larger than any
    /// device's free memory.
    #[error(
        "no device can hold {piece} ({bytes} bytes): the most free memory any device holding \
         the model has is {largest_free} bytes, on {device}"
    )]
    PieceTooLarge {
        /// What the piece is, e.g. "layer 12 with its KV cache".
        piece: String,
        /// Its bytes.
        bytes: u64,
        /// The largest budget minus overhead among eligible devices.
        largest_free: u64,
        /// The device with that much free memory.
        device: String,
    },
    /// Memory suffices in total but no ordering of devices both fits every stage and is
    /// connected by usable links; the text gives the numbers.
    #[error("no feasible plan: {0}")]
    NoFeasiblePlan(String),
    /// A device named in the request (head node, fixed order, explicit assignment) is not in
    /// the graph.
    #[error("unknown device {0}")]
    UnknownDevice(String),
    /// A device named in a fixed order or assignment does not hold the requested model.
    #[error("device {device} does not hold model {model_sha256}")]
    NotEligible {
        /// The device.
        device: String,
        /// The requested model.
        model_sha256: String,
    },
    /// An explicit assignment is not a contiguous, ordered cover of all layers, or uses a
    /// device twice.
    #[error("invalid assignment: {0}")]
    InvalidAssignment(String),
    /// An explicit assignment puts more on a device than its memory budget.
    #[error("stage on {device} needs {needed} bytes, budget is {budget}")]
    StageOverBudget {
        /// The device.
        device: String,
        /// Bytes the stage needs.
        needed: u64,
        /// The device's memory budget.
        budget: u64,
    },
    /// Two consecutive stages (or a stage and the head node) have no known link and no
    /// default link was configured.
    #[error("no link between {from} and {to}")]
    Unreachable {
        /// Sending side.
        from: String,
        /// Receiving side.
        to: String,
    },
}

/// Why a straggler monitor rejected an input.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum StragglerError {
    /// A measurement for a device the monitor does not track.
    #[error("unknown device {0}")]
    UnknownDevice(String),
    /// A step time that is NaN, infinite or negative.
    #[error("invalid step time {0}")]
    InvalidStep(f64),
}

//! Sparkplug B 3.0: the protobuf payload ([`proto`]). Topic names live with the agent's
//! publisher (`agent/src/publish/topics.rs`), the node's state machine in `publish/sparkplug.rs`.

pub mod proto;

pub use proto::{
    DataType, Metric, MetricValue, Payload, PropertySet, PropertyValue, PropertyValueKind,
};

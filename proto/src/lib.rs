//! The dealmesh contract, compiled: the deal event envelope with every event
//! type, and the gRPC APIs of the services. Only `proto/` defines the wire.

/// Package `dealmesh.v1`.
pub mod v1 {
    #![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
    tonic::include_proto!("dealmesh.v1");
}

/// The encoded `FileDescriptorSet` of every dealmesh proto, for gRPC
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dealmesh_descriptor");

pub use v1::DealEvent;
pub use v1::deal_event::Payload;

impl Payload {
    /// The event type's name as it appears in the contract, e.g. `DealSourced`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Payload::DealSourced(_) => "DealSourced",
            Payload::DealEnriched(_) => "DealEnriched",
            Payload::EnrichmentFailed(_) => "EnrichmentFailed",
            Payload::DealScored(_) => "DealScored",
            Payload::StageChanged(_) => "StageChanged",
            Payload::OwnerAssigned(_) => "OwnerAssigned",
            Payload::NoteAdded(_) => "NoteAdded",
            Payload::DealShared(_) => "DealShared",
            Payload::VoteOpened(_) => "VoteOpened",
            Payload::VoteCast(_) => "VoteCast",
            Payload::VoteClosed(_) => "VoteClosed",
            Payload::DealsMerged(_) => "DealsMerged",
            Payload::DealsUnmerged(_) => "DealsUnmerged",
            Payload::DealArchived(_) => "DealArchived",
        }
    }

    /// The CloudEvents `type` attribute for this event, e.g.
    /// `dealmesh.v1.DealSourced`.
    pub fn cloudevents_type(&self) -> String {
        format!("dealmesh.v1.{}", self.type_name())
    }
}

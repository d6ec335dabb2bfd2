//! Status conditions as the compiler produces them.
//!
//! The compiler is pure, so it stamps every condition with the Unix epoch;
//! whoever publishes statuses (the status writer, standalone's `/status`)
//! replaces it with the time the condition last changed.

use crate::api::{Condition, Time, Timestamp};

/// A condition with the compiler's placeholder timestamp.
pub fn condition(
    type_: &str,
    status: bool,
    reason: impl AsRef<str>,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.as_ref().to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

pub mod types {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const CONFLICTED: &str = "Conflicted";
    pub const PARTIALLY_INVALID: &str = "PartiallyInvalid";
    pub const OVERLAPPING_TLS_CONFIG: &str = "OverlappingTLSConfig";
    pub const INSECURE_FRONTEND_VALIDATION_MODE: &str = "InsecureFrontendValidationMode";
    /// Agimo's own: whether requests wait for a ready endpoint.
    pub const SCALE_TO_ZERO: &str = "agimo.dev/ScaleToZero";

    /// Types the compiler sets only while they apply: a published condition
    /// of one of these types that the compiler no longer sets is stale, and
    /// removed (others' condition types are kept).
    pub const SET_WHILE_THEY_APPLY: &[&str] =
        &[OVERLAPPING_TLS_CONFIG, INSECURE_FRONTEND_VALIDATION_MODE, SCALE_TO_ZERO];
}

/// The reason of a condition: the Gateway API's own, or Agimo's where it
/// adds something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Accepted,
    Programmed,
    ResolvedRefs,
    Invalid,
    Pending,
    InvalidParameters,
    ListenersNotValid,
    UnsupportedAddress,
    AddressNotUsable,
    AddressNotAssigned,
    UnsupportedProtocol,
    UnsupportedValue,
    PortUnavailable,
    InvalidRouteKinds,
    InvalidCertificateRef,
    InvalidClientCertificateRef,
    RefNotPermitted,
    NoConflicts,
    HostnameConflict,
    ProtocolConflict,
    NotAllowedByListeners,
    NoMatchingListenerHostname,
    NoMatchingParent,
    BackendNotFound,
    InvalidKind,
    OverlappingHostnames,
    NoValidCACertificate,
    InvalidCACertificateRef,
    InvalidCACertificateKind,
    ConfigurationChanged,
    /// Agimo's own route reason: the parent Gateway exists but is not accepted.
    GatewayNotAccepted,
    /// ListenerSet reasons: the Gateway's `allowedListeners` does not admit
    /// it; its Gateway is not accepted.
    NotAllowed,
    ParentNotAccepted,
    /// Agimo's own `agimo.dev/ScaleToZero` reasons.
    Enabled,
    Disabled,
    InvalidAnnotation,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Accepted => "Accepted",
            Reason::Programmed => "Programmed",
            Reason::ResolvedRefs => "ResolvedRefs",
            Reason::Invalid => "Invalid",
            Reason::Pending => "Pending",
            Reason::InvalidParameters => "InvalidParameters",
            Reason::ListenersNotValid => "ListenersNotValid",
            Reason::UnsupportedAddress => "UnsupportedAddress",
            Reason::AddressNotUsable => "AddressNotUsable",
            Reason::AddressNotAssigned => "AddressNotAssigned",
            Reason::UnsupportedProtocol => "UnsupportedProtocol",
            Reason::UnsupportedValue => "UnsupportedValue",
            Reason::PortUnavailable => "PortUnavailable",
            Reason::InvalidRouteKinds => "InvalidRouteKinds",
            Reason::InvalidCertificateRef => "InvalidCertificateRef",
            Reason::InvalidClientCertificateRef => "InvalidClientCertificateRef",
            Reason::RefNotPermitted => "RefNotPermitted",
            Reason::NoConflicts => "NoConflicts",
            Reason::HostnameConflict => "HostnameConflict",
            Reason::ProtocolConflict => "ProtocolConflict",
            Reason::NotAllowedByListeners => "NotAllowedByListeners",
            Reason::NoMatchingListenerHostname => "NoMatchingListenerHostname",
            Reason::NoMatchingParent => "NoMatchingParent",
            Reason::BackendNotFound => "BackendNotFound",
            Reason::InvalidKind => "InvalidKind",
            Reason::OverlappingHostnames => "OverlappingHostnames",
            Reason::NoValidCACertificate => "NoValidCACertificate",
            Reason::InvalidCACertificateRef => "InvalidCACertificateRef",
            Reason::InvalidCACertificateKind => "InvalidCACertificateKind",
            Reason::ConfigurationChanged => "ConfigurationChanged",
            Reason::GatewayNotAccepted => "GatewayNotAccepted",
            Reason::NotAllowed => "NotAllowed",
            Reason::ParentNotAccepted => "ParentNotAccepted",
            Reason::Enabled => "Enabled",
            Reason::Disabled => "Disabled",
            Reason::InvalidAnnotation => "InvalidAnnotation",
        }
    }
}

impl AsRef<str> for Reason {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// Why something is not as its spec asks: the reason and message of the
/// condition that says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub fn new(reason: Reason, message: impl Into<String>) -> Problem {
        Problem { reason, message: message.into() }
    }

    /// The condition of type `type_` that reports this problem.
    pub fn condition(&self, type_: &str, status: bool, generation: Option<i64>) -> Condition {
        condition(type_, status, self.reason, self.message.clone(), generation)
    }
}

//! The one place that names generated Gateway API and Kubernetes types.
//!
//! Everything else in the controller imports from here, so a crate upgrade
//! (or generating our own types from newer CRDs) touches this file only.

pub use gateway_api::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyStatus, BackendTlsPolicyStatusAncestors as PolicyAncestorStatus,
    BackendTlsPolicyStatusAncestorsAncestorRef as PolicyAncestorRef,
    BackendTlsPolicyValidationSubjectAltNamesType as SubjectAltNameType,
};
pub use gateway_api::experimental::gatewayclasses::{
    GatewayClass, GatewayClassSpec, GatewayClassStatus, GatewayClassStatusSupportedFeatures as SupportedFeature,
};
pub use gateway_api::experimental::gateways::GatewayAllowedListenersNamespacesFrom as FromListenerNamespaces;
pub use gateway_api::experimental::gateways::{
    Gateway, GatewayAddresses as GatewayAddress, GatewayListeners as Listener,
    GatewayListenersAllowedRoutesKinds as RouteGroupKind,
    GatewayListenersAllowedRoutesNamespacesFrom as FromNamespaces,
    GatewayListenersAllowedRoutesNamespacesSelector as NamespaceSelector,
    GatewayListenersTlsCertificateRefs as CertificateRef, GatewayListenersTlsMode as TlsMode, GatewaySpec,
    GatewayStatus, GatewayStatusAddresses as GatewayStatusAddress, GatewayStatusListeners as ListenerStatus,
    GatewayStatusListenersSupportedKinds as SupportedKind, GatewayTlsFrontend as FrontendTls,
    GatewayTlsFrontendDefaultValidation as FrontendValidation,
    GatewayTlsFrontendDefaultValidationMode as FrontendValidationMode,
    GatewayTlsFrontendPerPortTlsValidation as FrontendPerPortValidation,
    GatewayTlsFrontendPerPortTlsValidationMode as FrontendPerPortValidationMode,
};
pub use gateway_api::experimental::grpcroutes::{
    GrpcRoute, GrpcRouteRules as GrpcRule, GrpcRouteRulesMatches as GrpcRouteMatch,
    GrpcRouteRulesMatchesMethodType as GrpcMethodMatchType, GrpcRouteStatus,
};
pub use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteParentRefs as ParentRef, HttpRouteRules as Rule, HttpRouteRulesBackendRefs as BackendRef,
    HttpRouteRulesFilters as Filter, HttpRouteRulesFiltersCors as CorsFilter,
    HttpRouteRulesFiltersRequestHeaderModifier as HeaderModifier, HttpRouteRulesFiltersRequestMirror as RequestMirror,
    HttpRouteRulesFiltersRequestMirrorBackendRef as MirrorBackendRef,
    HttpRouteRulesFiltersRequestRedirect as RequestRedirect,
    HttpRouteRulesFiltersRequestRedirectPathType as RedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme as RedirectScheme, HttpRouteRulesFiltersType as FilterType,
    HttpRouteRulesFiltersUrlRewrite as UrlRewrite, HttpRouteRulesFiltersUrlRewritePathType as RewritePathType,
    HttpRouteRulesMatches as RouteMatch, HttpRouteRulesMatchesHeadersType as HeaderMatchType,
    HttpRouteRulesMatchesMethod as MatchMethod, HttpRouteRulesMatchesPathType as PathMatchType,
    HttpRouteRulesMatchesQueryParamsType as QueryParamMatchType, HttpRouteRulesRetry as Retry,
    HttpRouteRulesTimeouts as Timeouts, HttpRouteSpec, HttpRouteStatus, HttpRouteStatusParents as RouteParentStatus,
    HttpRouteStatusParentsParentRef as ParentReference,
};
pub use gateway_api::experimental::listenersets::{
    ListenerSet, ListenerSetStatus, ListenerSetStatusListeners as ListenerSetListenerStatus,
    ListenerSetStatusListenersSupportedKinds as ListenerSetSupportedKind,
};
pub use gateway_api::experimental::referencegrants::{ReferenceGrant, ReferenceGrantFrom, ReferenceGrantTo};
pub use gateway_api::experimental::tlsroutes::TlsRoute;

pub use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServicePort};
pub use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
pub use k8s_openapi::jiff::Timestamp;

/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The `controllerName` of GatewayClasses that Agimo serves.
pub const CONTROLLER_NAME: &str = "agimo.dev/gateway-controller";
/// The label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label the API server sets on every Namespace with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

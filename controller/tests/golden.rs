//! Golden tests for the compiler: every `testdata/<case>.in.yaml` compiles to
//! the snapshot and statuses in `testdata/<case>.out.yaml`. Each case is a
//! test of its own, named after its file.
//!
//! A case with a `testdata/<case>.then.yaml` compiles twice: the `.in.yaml`
//! world, then the `.then.yaml` world with what the first compile carried
//! over; `.out.yaml` holds the second compile's output under `then:`.
//!
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p agimo-controller --test golden`
//! and review the diff.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agimo_controller::sources::files;
use agimo_controller::{Carryover, Compiled, Statuses, compile};
use agimo_shared::Snapshot;
use agimo_shared::snapshot::ObjectRef;

/// One test per case: `httproute_matching` checks `testdata/httproute-matching.*`.
macro_rules! golden {
    ($($case:ident,)*) => {
        $(
            #[test]
            fn $case() {
                check(&stringify!($case).replace('_', "-"));
            }
        )*

        /// The cases above, as their files name them.
        fn cases() -> Vec<String> {
            vec![$(stringify!($case).replace('_', "-")),*]
        }
    };
}

golden! {
    backendtlspolicy_statuses,
    gateway_addresses,
    gateway_frontend_client_certificate_validation,
    gateway_invalid_listener_does_not_conflict,
    gateway_invalid_parameters_ref,
    gateway_invalid_route_kind,
    gateway_invalid_tls_configuration,
    gateway_listener_conflicts,
    gateway_listener_unsupported_protocol,
    gateway_modify_listeners,
    gateway_observed_generation_bump,
    gateway_secret_invalid_reference_grant,
    gateway_secret_missing_reference_grant,
    gateway_secret_reference_grant_all_in_namespace,
    gateway_secret_reference_grant_specific,
    gateway_with_attached_routes,
    gatewayclass_observed_generation_bump,
    gateways_sharing_port,
    gateways_wildcard_and_specific_address,
    httproute_cors,
    httproute_cross_namespace,
    httproute_exact_path_matching,
    httproute_filters_and_timeouts,
    httproute_header_matching,
    httproute_hostname_intersection,
    httproute_https_listener,
    httproute_invalid_backend_ref_unknown_kind,
    httproute_invalid_cross_namespace_backend_ref,
    httproute_invalid_cross_namespace_parent_ref,
    httproute_invalid_non_existent_backend_ref,
    httproute_invalid_parent_ref_not_matching_section_name,
    httproute_invalid_reference_grant,
    httproute_invalid_regex,
    httproute_listener_hostname_matching,
    httproute_matching,
    httproute_matching_across_routes,
    httproute_multiple_gateways,
    httproute_no_backend_refs,
    httproute_observed_generation_bump,
    httproute_partially_invalid_via_invalid_reference_grant,
    httproute_path_match_order,
    httproute_redirect_host_and_status,
    httproute_redirect_path_scheme_port,
    httproute_reference_grant,
    httproute_request_header_modifier,
    httproute_request_mirror,
    httproute_retry,
    httproute_service_types,
    httproute_simple_same_namespace,
    httproute_unsupported_filter,
    httproute_weight,
    listenerset_allowed_namespaces_and_reference_grants,
    listenerset_protocol_and_hostname_conflicts,
    listenerset_routes,
    scale_to_zero_annotations,
    scale_to_zero_last_good,
    tlsroute_listeners,
}

#[derive(serde::Serialize)]
struct Golden<'a> {
    snapshot: &'a Snapshot,
    statuses: &'a Statuses,
    /// The second compile of a two-compile case.
    #[serde(skip_serializing_if = "Option::is_none")]
    then: Option<Box<Golden<'a>>>,
}

impl<'a> Golden<'a> {
    fn of(compiled: &'a Compiled) -> Self {
        Golden { snapshot: &compiled.snapshot, statuses: &compiled.statuses, then: None }
    }
}

fn testdata(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(file)
}

fn compile_file(path: &Path, previous: &Carryover) -> Compiled {
    let world = files::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    compile(&world, previous)
}

/// The case's compiles: the first, and the second if the case has one.
fn compile_case(case: &str) -> (Compiled, Option<Compiled>) {
    let first = compile_file(&testdata(&format!("{case}.in.yaml")), &Carryover::default());
    let then = testdata(&format!("{case}.then.yaml"));
    let second = then.exists().then(|| compile_file(&then, &first.carryover));
    (first, second)
}

fn render(case: &str) -> String {
    let (first, second) = compile_case(case);
    let mut golden = Golden::of(&first);
    golden.then = second.as_ref().map(|s| Box::new(Golden::of(s)));
    serde_yaml_ng::to_string(&golden).expect("serialize")
}

fn check(case: &str) {
    let got = render(case);
    // Compiling again gives the same output: the compiler is deterministic.
    assert_eq!(got, render(case), "{case}: compile is not deterministic");
    let output = testdata(&format!("{case}.out.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&output, &got).expect("write golden");
        return;
    }
    match std::fs::read_to_string(&output) {
        Ok(want) if want == got => {}
        Ok(want) => panic!("{} does not match:\n{}", output.display(), diff(&want, &got)),
        Err(_) => panic!("{} is missing; run with UPDATE_GOLDEN=1", output.display()),
    }
}

/// Every `.in.yaml` in testdata has its test above (a new case must be added
/// to the list), and every case has its files.
#[test]
fn every_case_has_a_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("testdata directory")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter_map(|name| name.strip_suffix(".in.yaml").map(str::to_owned))
        .collect();
    on_disk.sort();
    let mut listed = cases();
    listed.sort();
    let missing: Vec<&String> = on_disk.iter().filter(|c| !listed.contains(c)).collect();
    assert!(missing.is_empty(), "testdata cases without a test in golden.rs: {missing:?}");
    let gone: Vec<&String> = listed.iter().filter(|c| !on_disk.contains(c)).collect();
    assert!(gone.is_empty(), "golden.rs cases without a testdata/<case>.in.yaml: {gone:?}");
}

/// What the two-compile case shows, asserted beside its golden file: the
/// second compile keeps the last good values the first carried over.
#[test]
fn the_second_compile_keeps_the_last_good_annotation_values() {
    let (first, second) = compile_case("scale-to-zero-last-good");
    let second = second.expect("the case compiles twice");
    let gate = |compiled: &Compiled, host: &str| {
        let listener = &compiled.snapshot.binds[0].listeners[0];
        let bucket = listener.routes.buckets().find(|b| &*b.label == host).expect("routes for the host");
        bucket.entries[0].rule.gate.clone().expect("requests are held")
    };
    let condition = |compiled: &Compiled, route: &str| {
        let key = ObjectRef { namespace: "apps".into(), name: route.into() };
        let parent = &compiled.statuses.http_routes[&key][0];
        parent.conditions.iter().find(|c| c.type_ == "agimo.dev/ScaleToZero").expect("ScaleToZero").clone()
    };
    assert_eq!(
        (gate(&first, "kept.example").wait_timeout, gate(&first, "kept.example").max_pending),
        (Duration::from_secs(30), 50)
    );
    // The route's bad wait-timeout and the Gateway's bad max-pending both
    // leave the previous values in force.
    let kept = gate(&second, "kept.example");
    assert_eq!((kept.wait_timeout, kept.max_pending), (Duration::from_secs(30), 50));
    let c = condition(&second, "kept");
    assert_eq!(c.reason, "InvalidAnnotation");
    assert!(c.message.contains("agimo.dev/wait-timeout \"soon\" is invalid"), "{}", c.message);
    assert!(c.message.contains("keeping the previous value \"30s\""), "{}", c.message);
    assert!(c.message.contains("keeping the previous value \"50\""), "{}", c.message);
    // A route new in the second world had no good value: the default.
    assert_eq!(gate(&second, "late.example").wait_timeout, Duration::from_secs(60));
    assert!(condition(&second, "late").message.contains("using the default"));
}

/// A small line diff: enough to see what changed without a dependency.
fn diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<_>, Vec<_>) = (want.lines().collect(), got.lines().collect());
    let mut out = String::new();
    let first = w.iter().zip(&g).position(|(a, b)| a != b).unwrap_or(w.len().min(g.len()));
    for line in w.iter().skip(first).take(10) {
        out.push_str(&format!("- {line}\n"));
    }
    for line in g.iter().skip(first).take(10) {
        out.push_str(&format!("+ {line}\n"));
    }
    format!("first difference at line {}:\n{out}", first + 1)
}

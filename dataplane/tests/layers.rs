//! The dataplane's modules depend one way, along a request's path: the
//! HTTP/1.1 wire code knows nothing of the upstream pools, the pools nothing
//! of the proxy, the proxy nothing of the connections that drive it.

use std::path::Path;

use agimo_testkit::layers;

/// Lowest first: a module uses its own layer or lower ones.
const LAYERS: &[&[&str]] = &[
    &["base", "config", "metrics"],
    &["activity"],
    &["http1"],
    &["upstream"],
    &["proxy"],
    &["conn"],
    &["control"],
    &["admin", "fuzzing"],
];

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn modules_depend_one_way_with_no_cycle() {
    layers::check(&src(), LAYERS);
}

#[test]
fn the_http1_code_uses_only_the_bottom_of_the_crate() {
    let graph = layers::graph(&src());
    let used: Vec<&String> = graph
        .iter()
        .filter(|(module, _)| module.starts_with("http1"))
        .flat_map(|(_, uses)| uses)
        .filter(|used| !used.starts_with("http1"))
        .collect();
    for module in &used {
        assert!(["base", "config", "activity"].contains(&module.as_str()), "http1 uses {module}");
    }
}

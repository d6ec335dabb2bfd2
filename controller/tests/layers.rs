//! The controller's modules depend one way, along the data's path: the
//! generated types, then the world (the input model, a leaf), the sources
//! that fill it and the compiler that reads it, the statuses written back,
//! and the runtime and modes that wire them.

use std::path::Path;

use agimo_testkit::layers;

/// Lowest first: a module uses its own layer or lower ones.
const LAYERS: &[&[&str]] = &[
    &["api"],
    &["world"],
    &["sources", "compiler", "address_pool", "gateway_services", "leader"],
    &["status"],
    &["runtime"],
    &["standalone", "kubernetes"],
];

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn modules_depend_one_way_with_no_cycle() {
    layers::check(&src(), LAYERS);
}

#[test]
fn the_world_uses_only_the_api_types() {
    let graph = layers::graph(&src());
    assert!(graph["world"].iter().all(|used| used == "api"), "world uses {:?}", graph["world"]);
}

//! The compiler, resources in, snapshot out: whatever the loader accepts
//! compiles without panicking, and deterministically.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The golden files' form, maps in order (Debug would print hash maps in a
/// random order).
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serialisable")
}

fuzz_target!(|text: &str| {
    let Ok(world) = agimo_controller::sources::files::load_str("fuzz.yaml", text) else { return };
    let (snapshot, statuses) = agimo_controller::compile(&world);
    let (again, statuses_again) = agimo_controller::compile(&world);
    assert_eq!(json(&snapshot), json(&again), "the compiler is deterministic");
    assert_eq!(json(&statuses), json(&statuses_again), "the statuses are deterministic");
});

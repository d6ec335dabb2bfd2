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
    let first = agimo_controller::compile(&world, &Default::default());
    let again = agimo_controller::compile(&world, &Default::default());
    assert_eq!(json(&first.snapshot), json(&again.snapshot), "the compiler is deterministic");
    assert_eq!(json(&first.statuses), json(&again.statuses), "the statuses are deterministic");
    // Compiling again with what the first carried over changes nothing.
    let carried = agimo_controller::compile(&world, &first.carryover);
    assert_eq!(json(&first.snapshot), json(&carried.snapshot), "a carryover of the same world changes nothing");
});

//! The YAML loader: any text is loaded as resources or refused with errors
//! that name a document; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match agimo_controller::sources::files::load_str("fuzz.yaml", text) {
        Ok(_) => {}
        Err(errors) => assert!(!errors.to_string().is_empty(), "a refusal says why"),
    }
});

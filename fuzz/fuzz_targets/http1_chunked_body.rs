//! Chunked bodies as Agimo's HTTP/1.1 client decodes them: the same data
//! and end however the bytes arrive (`agimo_dataplane::fuzzing::chunked_body`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, &[u8])| {
    let (split, bytes) = input;
    agimo_dataplane::fuzzing::chunked_body(bytes, usize::from(split))
});

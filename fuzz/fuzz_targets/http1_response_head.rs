//! Response heads as Agimo's HTTP/1.1 client reads them from a backend:
//! taken exactly, with a framing that agrees with their fields
//! (`agimo_dataplane::fuzzing::response_head`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, &[u8])| {
    let (head_request, bytes) = input;
    agimo_dataplane::fuzzing::response_head(bytes, head_request)
});

//! Request heads as Agimo's HTTP/1.1 server reads them: taken exactly or
//! left whole, never with framing fields, and forwarded as they were read
//! (`agimo_dataplane::fuzzing::request_head`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| agimo_dataplane::fuzzing::request_head(bytes));

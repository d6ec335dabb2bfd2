//! HTTP/2 written by hand, frame by frame, for tests that send what no
//! well-behaved client library would: floods, and requests a proxy must not
//! pass on (connection-specific headers, lengths that lie).

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// One frame: the 9-byte header, then `payload`.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK block for `GET http://<authority>/` from static-table entries
/// and one literal, no Huffman.
pub fn get_block(authority: &str) -> Vec<u8> {
    method_block(0x82, authority)
}

/// The same for `POST` (a request whose body is read and forwarded).
pub fn post_block(authority: &str) -> Vec<u8> {
    method_block(0x83, authority)
}

/// `method` is the static-table index byte of `:method`; `:scheme http`,
/// `:path /`.
fn method_block(method: u8, authority: &str) -> Vec<u8> {
    let mut block = vec![method, 0x86, 0x84, 0x01, authority.len() as u8];
    block.extend_from_slice(authority.as_bytes());
    block
}

/// A literal header field without indexing, new name, no Huffman (names
/// and values up to 126 bytes).
pub fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127, "short names and values only");
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name);
    out.push(value.len() as u8);
    out.extend_from_slice(value);
    out
}

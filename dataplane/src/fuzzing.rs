//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature):
//! the HTTP/1.1 wire code on its own, each with the properties it must keep
//! on any input. A property that fails panics, which the fuzzer reports.

use bytes::BytesMut;
use http::{Method, StatusCode, header};

use crate::config::Config;
use crate::http1::client::{self, Chunk, Framing};
use crate::http1::server::{self, Parsed};

/// A client's request head, as Agimo's HTTP/1.1 server reads it. A request
/// it takes has no body and no framing fields, is taken out of the buffer
/// exactly (the rest, a pipelined request, stays), and forwarded as
/// [`client::encode_head`] writes it reads back the same. Anything else is
/// left whole for hyper, or refused with a 4xx.
pub fn request_head(bytes: &[u8]) {
    let config = Config::default();
    let mut read = BytesMut::from(bytes);
    match server::parse_head::<()>(&mut read, &config) {
        Ok(Parsed::Plain(plain)) => {
            assert!(bytes.ends_with(&read), "what is left is the input's tail");
            assert!(bytes.len() - read.len() <= config.max_request_header_bytes, "a head over the limit was taken");
            let request = &plain.request;
            assert_ne!(request.method(), Method::CONNECT);
            for name in [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::UPGRADE, header::EXPECT] {
                assert!(!request.headers().contains_key(&name), "a request with {name} was taken");
            }
            // What the backend gets reads back as the same request.
            let forwarded = client::encode_head(request);
            let mut again = BytesMut::from(&forwarded[..]);
            match server::parse_head::<()>(&mut again, &config) {
                Ok(Parsed::Plain(back)) => {
                    assert!(again.is_empty(), "the forwarded head is one head");
                    assert_eq!(back.request.method(), request.method());
                    // The path and query routed on are those forwarded (a
                    // fragment is dropped from both, as hyper does:
                    // fuzz/seeds/http1_request_head/target-fragment).
                    assert_eq!(back.request.uri().path(), request.uri().path());
                    assert_eq!(back.request.uri().query(), request.uri().query());
                    assert_eq!(back.request.headers(), request.headers());
                }
                // `content-length: 0` added for a method that has content.
                Ok(Parsed::Other) => {
                    assert!(![Method::GET, Method::HEAD, Method::DELETE, Method::OPTIONS].contains(request.method()));
                }
                Ok(Parsed::Partial) | Err(_) => {
                    panic!("the forwarded head does not read back: {:?}", String::from_utf8_lossy(&forwarded))
                }
            }
        }
        Ok(Parsed::Other | Parsed::Partial) => assert_eq!(&read[..], bytes, "left whole"),
        Err(status) => assert!(status.is_client_error(), "{status}"),
    }
}

/// A backend's response head, as Agimo's HTTP/1.1 client reads it: taken
/// out of the buffer exactly, with a framing that agrees with its fields
/// (a response with both a length and chunked coding is never reused).
pub fn response_head(bytes: &[u8], head_request: bool) {
    let mut read = BytesMut::from(bytes);
    match client::parse_head(&mut read, head_request) {
        Ok(client::Parsed::Head(head)) => {
            assert!(bytes.ends_with(&read), "what is left is the input's tail");
            for name in [header::CONTENT_LENGTH, header::TRANSFER_ENCODING] {
                if head.headers.contains_key(&name) {
                    assert!(!head.reusable || name == header::CONTENT_LENGTH, "{name} kept on a reused connection");
                }
            }
            if head_request || head.status == StatusCode::NO_CONTENT || head.status == StatusCode::NOT_MODIFIED {
                assert_eq!(head.framing, Framing::Done, "no body");
            }
            if head.framing == Framing::UntilClose {
                assert!(!head.reusable, "a body delimited by the close cannot be followed by another");
            }
        }
        Ok(client::Parsed::Interim) => assert!(bytes.ends_with(&read), "a 1xx head is taken out"),
        Ok(client::Parsed::Partial) => assert_eq!(&read[..], bytes, "left whole"),
        Err(_) => {}
    }
}

/// A chunked response body, decoded from the bytes in one piece and in two
/// (split at `split`): both readings give the same data and the same end
/// (done, waiting for more, or malformed), and the data is never more than
/// the input.
pub fn chunked_body(bytes: &[u8], split: usize) {
    let whole = decode(&[bytes]);
    let split = split % (bytes.len() + 1);
    let pieces = decode(&[&bytes[..split], &bytes[split..]]);
    assert_eq!(whole, pieces, "split at {split}");
    assert!(whole.0.len() <= bytes.len());
}

/// The data decoded from `pieces` arriving one after the other, and how
/// the body stands at the end: `Ok(true)` done, `Ok(false)` waiting for
/// more, `Err(())` malformed.
fn decode(pieces: &[&[u8]]) -> (Vec<u8>, Result<bool, ()>) {
    let mut framing = Framing::Chunked(Chunk::Size);
    let mut read = BytesMut::new();
    let mut data = Vec::new();
    for piece in pieces {
        read.extend_from_slice(piece);
        loop {
            match framing.decode(&mut read) {
                Ok(Some(bytes)) => data.extend_from_slice(&bytes),
                Ok(None) => break,
                Err(_) => return (data, Err(())),
            }
        }
    }
    (data, Ok(framing == Framing::Done))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smuggling tests' inputs (`controller/tests/smuggling.rs`) keep
    /// the properties; `fuzz/seeds/` seeds the fuzzer with them.
    #[test]
    fn the_seeds_keep_the_properties() {
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        let mut checked = 0;
        for (target, check) in [
            ("http1_request_head", request_head as fn(&[u8])),
            ("http1_response_head", |b: &[u8]| response_head(b, false)),
            ("http1_chunked_body", |b: &[u8]| chunked_body(b, b.len() / 2)),
        ] {
            for seed in std::fs::read_dir(seeds.join(target)).unwrap() {
                check(&std::fs::read(seed.unwrap().path()).unwrap());
                checked += 1;
            }
        }
        assert!(checked >= 20, "{checked} seeds");
    }

    #[test]
    fn chunked_bodies_decode_alike_in_any_pieces() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(decode(&[body]), (b"hello world".to_vec(), Ok(true)));
        for split in 0..=body.len() {
            chunked_body(body, split);
        }
        assert_eq!(decode(&[b"0x5\r\nhello\r\n"]).1, Err(()));
        assert_eq!(decode(&[b"5\r\nhel"]), (b"hel".to_vec(), Ok(false)));
    }
}

//! Feeds arbitrary bytes to every decoder of the wire that reads what a peer sends before any
//! codec does: the frame header, the hello, the welcome and the error payload. Any panic or
//! abort is a finding; whatever decodes must encode back to the bytes it came from (the
//! header, the hello and a well-formed error payload have one encoding per value).
#![no_main]

use courier::wire::{ErrorCode, ErrorPayload, Header, Hello, Welcome, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = Header::decode(data) {
        assert!(data.len() >= HEADER_LEN);
        assert_eq!(&header.to_bytes()[..], &data[..HEADER_LEN]);
        assert_eq!(data.len() - HEADER_LEN, header.payload_len as usize);
    }
    if let Ok(hello) = Hello::decode(data) {
        assert_eq!(&hello.encode()[..], data);
    }
    if let Ok(welcome) = Welcome::decode(data) {
        // The codec list is kept lossily; the rest must round-trip.
        let again = Welcome::decode(&welcome.encode()).expect("a welcome we encoded decodes");
        assert_eq!(again.status, welcome.status);
        assert_eq!(again.version, welcome.version);
    }
    // Any bytes decode (an error report must reach the user); well-formed ones (UTF-8 message,
    // a TooLarge with its sizes) encode back to exactly the same bytes.
    let payload = ErrorPayload::decode(data);
    let sizes_ok = payload.code != Some(ErrorCode::TooLarge) || payload.too_large.is_some();
    let text_ok = data.len() >= 2
        && std::str::from_utf8(&data[2 + if payload.too_large.is_some() { 16 } else { 0 }..])
            .is_ok();
    if sizes_ok && text_ok {
        let mut out = Vec::new();
        payload.encode(&mut out);
        assert_eq!(out, data);
    }
});

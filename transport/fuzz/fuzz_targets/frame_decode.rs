//! The frame decoder on arbitrary bytes, as a stage reads them off a link: decode frame after
//! frame until the bytes run out or one is refused. It may refuse, never panic or hang; a
//! decoded frame lies inside the input and its payload within the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::quic::{Frame, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_header: 256,
        max_payload: 1 << 16,
    };
    let mut rest = data;
    while let Ok((frame, used)) = Frame::decode(rest, &limits) {
        assert!(used > 0 && used <= rest.len());
        assert!(frame.payload.len() <= limits.max_payload as usize);
        rest = &rest[used..];
    }
});

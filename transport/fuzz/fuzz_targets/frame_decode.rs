//! The frame decoder on arbitrary bytes, as a stage reads them off a link: decode frame after
//! frame until the bytes run out or one is refused. It may refuse, never panic or hang; a
//! decoded frame lies inside the input and its payload is exactly what its header announces,
//! and decoding that payload as hidden states never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::quic::payload;
use transport::quic::{Dtype, Frame, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_header: 256,
        max_payload: 1 << 16,
    };
    let mut rest = data;
    let mut values = Vec::new();
    while let Ok((frame, used)) = Frame::decode(rest, &limits) {
        assert!(used > 0 && used <= rest.len());
        assert_eq!(Some(frame.payload.len()), frame.header.payload_len());
        let _ = match frame.header.dtype {
            Dtype::F32 => payload::f32_from_bytes(frame.payload, &mut values),
            Dtype::F16 => payload::f32_from_f16_bytes(frame.payload, &mut values),
            _ => Ok(()),
        };
        rest = &rest[used..];
    }
});

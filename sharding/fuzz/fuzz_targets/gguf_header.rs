//! The GGUF header parser on arbitrary bytes: it may reject them, never panic, hang or
//! allocate beyond what the input could describe.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = sharding::gguf::Header::parse(data) {
        // Every indexed tensor of a supported type lies inside the input.
        for t in &header.tensors {
            assert!(t.start + t.len <= data.len());
        }
    }
});

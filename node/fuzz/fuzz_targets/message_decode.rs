//! The pipeline's message decoder on arbitrary payloads, as a stage reads them off a frame:
//! it may refuse, never panic; rows it accepts decode to exactly the values their shape
//! announces, and the last-row cut of accepted rows decodes too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::pipeline::protocol::{self, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok(Message::Rows(rows)) = Message::decode(data) {
        let mut values = Vec::new();
        rows.values(&mut values).expect("accepted rows decode");
        assert_eq!(Some(values.len()), rows.head.count());
        let mut cut = Vec::new();
        if protocol::last_row(&rows, &mut cut).is_some() {
            assert!(matches!(Message::decode(&cut), Ok(Message::Rows(_))));
        }
    }
});

//! Cluster control messages (plan assignments, unplaceable verdicts) from a peer, on
//! arbitrary bytes: decoding may refuse, never panic; what decodes re-encodes to a message
//! that decodes to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal::cluster::control::Control;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Control::decode(data) {
        let again = Control::decode(&message.encode()).expect("re-encoded message decodes");
        assert_eq!(format!("{again:?}"), format!("{message:?}"));
    }
});

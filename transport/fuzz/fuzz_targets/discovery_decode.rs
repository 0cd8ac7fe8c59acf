//! Discovery requests and responses from a peer (adverts, peer exchange, plan messages), on
//! arbitrary bytes, through the codec and bounds the swarm uses: decoding may refuse, never
//! panic; a decoded request re-encodes to the same request, and a decoded advert joins a
//! membership table from its own peer and is refused from another
//! (`transport::discovery::fuzzing`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use transport::discovery::{fuzzing, Config};

fuzz_target!(|data: &[u8]| {
    fuzzing::request(data, Config::default().max_message_bytes);
    fuzzing::response(data);
});

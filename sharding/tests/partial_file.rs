//! A node that fetches a model from peers holds only the header and the tensors of its
//! shard; everything else in its file is a hole (zeros). These tests check that the header
//! parses from a prefix and that `ShardSpec::byte_ranges` names every byte a shard reads:
//! a shard loaded from a copy with every other byte zeroed computes exactly what one loaded
//! from the whole file does.

mod common;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use sharding::gguf::{GgufFile, Header};
use sharding::model::{Input, Shard, ShardOptions, ShardSpec};

#[test]
fn the_header_parses_from_a_prefix_and_not_from_less() {
    let path = common::model_path("smollm2");
    let bytes = std::fs::read(&path).unwrap();
    let full = Header::parse(&bytes).unwrap();
    let prefix = Header::parse_prefix(&bytes[..full.data_offset], bytes.len()).unwrap();
    assert_eq!(prefix.tensors, full.tensors);
    assert_eq!(prefix.data_offset, full.data_offset);
    assert_eq!(
        prefix.metadata.str("general.architecture").unwrap(),
        "llama"
    );
    // Short of the tensor index, or told the file is shorter than its tensors: an error.
    assert!(Header::parse_prefix(&bytes[..full.data_offset - 64], bytes.len()).is_err());
    assert!(Header::parse_prefix(&bytes[..full.data_offset], full.data_offset + 1).is_err());
}

/// A copy of the model where only the header and `keep` hold real bytes; removed on drop.
struct Holed(PathBuf);

impl Holed {
    fn new(bytes: &[u8], header: &Header, keep: &[Range<usize>]) -> Holed {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let mut holed = vec![0u8; bytes.len()];
        holed[..header.data_offset].copy_from_slice(&bytes[..header.data_offset]);
        for r in keep {
            holed[r.clone()].copy_from_slice(&bytes[r.clone()]);
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("shoal-holed-{}-{n}.gguf", std::process::id()));
        std::fs::write(&path, &holed).unwrap();
        Holed(path)
    }
}

impl Drop for Holed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs a prompt through `spec` (tokens or hidden states in) and returns what it wrote.
fn run(file: &GgufFile, spec: &ShardSpec, hidden: &[f32]) -> Vec<f32> {
    let mut shard = Shard::load(file, spec.clone(), ShardOptions::default()).unwrap();
    shard.open_session(1, 64).unwrap();
    let tokens = [1u32, 504, 3458, 282, 4127, 314, 253, 2];
    let mut out = Vec::new();
    let input = if spec.embed {
        Input::Tokens(&tokens)
    } else {
        Input::Hidden(hidden)
    };
    shard.forward(1, 0, input, &mut out).unwrap();
    out
}

#[test]
fn a_shard_reads_nothing_outside_its_byte_ranges() {
    let path = common::model_path("smollm2");
    let bytes = std::fs::read(&path).unwrap();
    let whole = GgufFile::open(&path).unwrap();
    let header = whole.header().clone();
    let specs = [
        ShardSpec {
            layers: 0..7,
            embed: true,
            head: false,
        },
        ShardSpec {
            layers: 7..30,
            embed: false,
            head: true,
        },
        ShardSpec {
            layers: 12..13,
            embed: false,
            head: false,
        },
    ];
    let hidden = run(&whole, &specs[0], &[]);
    for spec in &specs {
        let ranges = spec.byte_ranges(&header);
        let kept: usize = ranges.iter().map(|r| r.len()).sum();
        assert!(
            kept < bytes.len() / 2 || spec.head,
            "{spec:?} keeps {kept} bytes"
        );
        let holed = Holed::new(&bytes, &header, &ranges);
        let partial = GgufFile::open(&holed.0).unwrap();
        assert_eq!(
            run(&partial, spec, &hidden),
            run(&whole, spec, &hidden),
            "{spec:?} read bytes outside its ranges"
        );
    }
    // And the check has teeth: dropping one tensor of the range changes the output.
    let spec = &specs[2];
    let ranges = spec.byte_ranges(&header);
    let holed = Holed::new(&bytes, &header, &ranges[1..]);
    let partial = GgufFile::open(&holed.0).unwrap();
    assert_ne!(run(&partial, spec, &hidden), run(&whole, spec, &hidden));
}

//! Bad input to the engine is a typed error that names the problem, never a panic, and the
//! shard keeps serving its other sessions afterwards.

use sharding::gguf::{GgufError, GgufFile};
use sharding::model::{ConfigError, Input, LoadError, Shard, ShardOptions, ShardSpec, StepError};
use shoal_tests::{temp_dir, write_tiny_llama};

fn tiny(name: &str) -> (std::path::PathBuf, Vec<u8>) {
    let dir = temp_dir(name);
    let path = dir.join("tiny.gguf");
    write_tiny_llama(&path, 3);
    let bytes = std::fs::read(&path).unwrap();
    (dir, bytes)
}

#[test]
fn corrupt_files_are_typed_errors() {
    let (dir, bytes) = tiny("corrupt");
    let bad = dir.join("bad.gguf");
    // Every truncation point of the header and the first tensor's data.
    for cut in (0..bytes.len()).step_by(997) {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        match GgufFile::open(&bad) {
            Err(_) => {}
            Ok(file) => {
                // The header parsed, so every indexed tensor lies inside the truncated file.
                assert!(file.header().tensors.iter().all(|t| t.start + t.len <= cut));
            }
        }
    }
    let mut magic = bytes.clone();
    magic[..4].copy_from_slice(b"GGML");
    std::fs::write(&bad, &magic).unwrap();
    assert!(matches!(GgufFile::open(&bad), Err(GgufError::BadMagic(_))));
    assert!(matches!(
        GgufFile::open(dir.join("absent.gguf")),
        Err(GgufError::Io { .. })
    ));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn truncated_data_fails_load_naming_the_tensor() {
    let (dir, bytes) = tiny("truncated");
    let bad = dir.join("short.gguf");
    std::fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    let err = GgufFile::open(&bad).unwrap_err();
    assert!(
        matches!(err, GgufError::OutOfBounds { ref name, .. } if name.starts_with("blk.3.")),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn unknown_architecture_and_missing_tensor_are_named() {
    let (dir, bytes) = tiny("arch");
    let path = dir.join("arch.gguf");
    let mut patched = bytes.clone();
    let at = patched.windows(5).position(|w| w == b"llama").unwrap();
    patched[at..at + 5].copy_from_slice(b"mamba");
    std::fs::write(&path, &patched).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let err = Shard::load(&file, ShardSpec::full(4), ShardOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(err, LoadError::Config(ConfigError::UnknownArch(ref a)) if a == "mamba"),
        "{err}"
    );

    let mut renamed = bytes;
    let at = renamed
        .windows(17)
        .position(|w| w == b"blk.2.ffn_up.weig")
        .unwrap();
    renamed[at + 4] = b'9';
    std::fs::write(&path, &renamed).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let err = Shard::load(&file, ShardSpec::full(4), ShardOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("blk.2.ffn_up.weight"), "{err}");
    // A shard that does not need layer 2 loads fine.
    let spec = ShardSpec {
        layers: 3..4,
        embed: false,
        head: true,
    };
    assert!(Shard::load(&file, spec, ShardOptions::default()).is_ok());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_steps_are_refused_and_the_shard_keeps_serving() {
    let (dir, _) = tiny("steps");
    let file = GgufFile::open(dir.join("tiny.gguf")).unwrap();
    let opts = ShardOptions {
        max_sessions: 2,
        max_context: 16,
        ..ShardOptions::default()
    };
    let mut shard = Shard::load(&file, ShardSpec::full(4), opts).unwrap();
    let mut out = Vec::new();
    assert_eq!(
        shard.forward(1, 0, Input::Tokens(&[1]), &mut out),
        Err(StepError::UnknownSession(1))
    );
    shard.open_session(1, 0).unwrap();
    assert_eq!(shard.open_session(1, 0), Err(StepError::SessionExists(1)));
    assert!(matches!(
        shard.open_session(2, 17),
        Err(StepError::ContextTooLong { .. })
    ));
    shard.open_session(2, 8).unwrap();
    assert_eq!(shard.open_session(3, 0), Err(StepError::TooManySessions(2)));
    assert!(matches!(
        shard.forward(2, 0, Input::Tokens(&[1; 9]), &mut out),
        Err(StepError::ContextFull { .. })
    ));
    assert!(matches!(
        shard.forward(1, 0, Input::Tokens(&[96]), &mut out),
        Err(StepError::TokenOutOfRange { id: 96, .. })
    ));
    assert!(matches!(
        shard.forward(1, 0, Input::Hidden(&[0.0; 64]), &mut out),
        Err(StepError::WrongInput { .. })
    ));
    assert_eq!(
        shard.forward(1, 0, Input::Tokens(&[]), &mut out),
        Err(StepError::Empty)
    );
    assert!(matches!(
        shard.forward(1, 3, Input::Tokens(&[1]), &mut out),
        Err(StepError::PositionMismatch {
            expected: 0,
            got: 3,
            ..
        })
    ));
    // After all of that, both sessions still work.
    shard
        .forward(1, 0, Input::Tokens(&[1, 2, 3]), &mut out)
        .unwrap();
    shard.forward(2, 0, Input::Tokens(&[4]), &mut out).unwrap();
    assert_eq!(shard.session(1).unwrap().len(), 3);
    assert!(shard.close_session(1));
    assert!(!shard.close_session(1));
    std::fs::remove_dir_all(dir).ok();
}

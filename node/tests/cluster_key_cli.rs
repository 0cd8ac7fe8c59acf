//! The cluster key on the command line: `shoal run` refuses to start without a key or an
//! explicit `--insecure`; `shoal keygen` writes an owner-only key and never overwrites one; a
//! key file too short to be a secret is refused with the way to make a good one.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use shoal_tests::{model_path, temp_dir};

fn shoal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .env_remove("SHOAL_CLUSTER_KEY_FILE")
        .env_remove("SHOAL_INSECURE")
        .env_remove("SHOAL_CONFIG")
        .output()
        .expect("run shoal")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn run_without_a_key_refuses_to_start_and_says_how_to_get_one() {
    let model = model_path("smollm2");
    let out = shoal(&["run", "--model", model.to_str().unwrap(), "--no-mdns"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("no cluster key"), "{err}");
    assert!(err.contains("shoal keygen --out FILE"), "{err}");
    assert!(err.contains("--insecure"), "{err}");
}

#[test]
fn keygen_writes_an_owner_only_key_once_and_run_refuses_a_short_key() {
    let dir = temp_dir("cluster-key-cli");
    let path = dir.join("cluster.key");
    let _ = std::fs::remove_file(&path);
    let out = shoal(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key = std::fs::read_to_string(&path).unwrap();
    assert_eq!(key.trim().len(), 64, "{key:?}");
    assert!(key.trim().chars().all(|c| c.is_ascii_hexdigit()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let again = shoal(&["keygen", "--out", path.to_str().unwrap()]);
    assert!(!again.status.success(), "overwrote the key");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), key);

    let short = dir.join("short.key");
    std::fs::write(&short, "secret\n").unwrap();
    let model = model_path("smollm2");
    let out = shoal(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--cluster-key-file",
        short.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("holds 6 bytes"), "{}", stderr(&out));
}

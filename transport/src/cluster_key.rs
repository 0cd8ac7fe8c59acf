//! The cluster key: the one secret every member of a private cluster holds.
//!
//! Nothing travels under the key itself. Each use derives its own 32-byte value with
//! HMAC-SHA256 under a distinct label (the libp2p pre-shared key, the proof a QUIC link
//! exchanges), so a value seen on one channel says nothing about another. A key file holds
//! at least [`MIN_KEY_BYTES`] bytes of secret; `shoal keygen` writes 32 random bytes as hex.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Fewest secret bytes a key file may hold (after trimming surrounding whitespace).
pub const MIN_KEY_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// Why a cluster key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClusterKeyError {
    /// The file could not be read.
    #[error("reading the cluster key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file holds too little secret to be a key.
    #[error(
        "the cluster key file {path} holds {len} bytes; a key needs at least {MIN_KEY_BYTES} \
         (make one with `shoal keygen --out {path}`)"
    )]
    TooShort { path: String, len: usize },
}

/// A cluster's shared secret. Cloning is cheap; `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    /// HMAC-SHA256 of the file's bytes under a fixed label: every derivation starts here, so
    /// keys of any length behave alike.
    root: [u8; 32],
}

impl ClusterKey {
    /// A key from secret bytes (at least [`MIN_KEY_BYTES`]; checked by the callers that read
    /// files, any length is accepted here).
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(b"shoal cluster key v1").expect("any key size");
        mac.update(secret);
        Self {
            root: mac.finalize().into_bytes().into(),
        }
    }

    /// Reads a key file: its contents, surrounding whitespace trimmed, are the secret.
    pub fn from_file(path: &Path) -> Result<Self, ClusterKeyError> {
        let bytes = std::fs::read(path).map_err(|source| ClusterKeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let secret = bytes.trim_ascii();
        if secret.len() < MIN_KEY_BYTES {
            return Err(ClusterKeyError::TooShort {
                path: path.display().to_string(),
                len: secret.len(),
            });
        }
        Ok(Self::from_secret(secret))
    }

    /// 32 random bytes as 64 hex characters plus a newline: the contents of a new key file.
    pub fn generate_file_contents() -> String {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).expect("the OS random source");
        let mut text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        text.push('\n');
        text
    }

    /// A 32-byte value for one purpose, named by `label`.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        self.mac(label, &[])
    }

    /// HMAC-SHA256 of `data` under the key derived for `label`.
    pub fn mac(&self, label: &str, data: &[u8]) -> [u8; 32] {
        let mut mac = self.keyed(label);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is [`ClusterKey::mac`] of `data` under `label`, compared in constant time.
    pub fn verify(&self, label: &str, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.keyed(label);
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }

    /// A short public name of the key (8 hex digits), for logs and status: nodes showing the
    /// same id hold the same key. It reveals nothing usable about the secret.
    pub fn id(&self) -> String {
        self.derive("public id")[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn keyed(&self, label: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.root).expect("any key size");
        // Length-prefix the label so no (label, data) pair collides with another.
        mac.update(&(label.len() as u32).to_le_bytes());
        mac.update(label.as_bytes());
        mac
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey(id {})", self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_differ_by_label_and_by_key() {
        let a = ClusterKey::from_secret(b"0123456789abcdef");
        let b = ClusterKey::from_secret(b"0123456789abcdeg");
        assert_ne!(a.derive("pnet"), a.derive("quic"));
        assert_ne!(a.derive("pnet"), b.derive("pnet"));
        assert_eq!(a.derive("pnet"), a.clone().derive("pnet"));
        assert_ne!(a.id(), b.id());
    }

    #[test]
    fn verify_accepts_only_the_matching_tag() {
        let key = ClusterKey::from_secret(b"0123456789abcdef");
        let tag = key.mac("proof", b"session");
        assert!(key.verify("proof", b"session", &tag));
        assert!(!key.verify("proof", b"session!", &tag));
        assert!(!key.verify("other", b"session", &tag));
        assert!(!key.verify("proof", b"session", &tag[..31]));
        let other = ClusterKey::from_secret(b"fedcba9876543210");
        assert!(!other.verify("proof", b"session", &tag));
    }

    #[test]
    fn label_and_data_boundaries_do_not_collide() {
        let key = ClusterKey::from_secret(b"0123456789abcdef");
        assert_ne!(key.mac("ab", b"c"), key.mac("a", b"bc"));
    }

    #[test]
    fn key_files_are_trimmed_and_short_ones_refused() {
        let dir = std::env::temp_dir().join(format!("shoal-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let contents = ClusterKey::generate_file_contents();
        assert_eq!(contents.len(), 65);
        std::fs::write(&path, &contents).unwrap();
        let from_file = ClusterKey::from_file(&path).unwrap();
        assert_eq!(
            from_file,
            ClusterKey::from_secret(contents.trim().as_bytes())
        );
        assert_ne!(contents, ClusterKey::generate_file_contents());

        std::fs::write(&path, "  short \n").unwrap();
        let err = ClusterKey::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("holds 5 bytes"), "{err}");
        assert!(ClusterKey::from_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = ClusterKey::from_secret(b"0123456789abcdef");
        let shown = format!("{key:?}");
        assert!(shown.starts_with("ClusterKey(id "), "{shown}");
        assert!(!shown.contains("0123"));
    }
}

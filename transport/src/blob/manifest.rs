//! What a file is made of: its length, sha256, and the sha256 of every chunk.

use std::io::Read;
use std::ops::Range;
use std::path::Path;

use bincode::{Decode, Encode};
use sha2::{Digest, Sha256};

/// Most chunks a manifest has: chunks grow with the file so a manifest stays under
/// `MAX_CHUNKS * 32` bytes (128 KiB) for any model size.
pub const MAX_CHUNKS: u64 = 4096;
/// Smallest chunk: one frame of 1 MiB per request keeps per-request overhead negligible.
const MIN_CHUNK: u64 = 1 << 20;
/// Largest file fetched from peers: its chunks (16 MiB) fit a frame, and a peer announcing
/// an absurd length cannot make the fetcher allocate an absurd chunk buffer.
pub const MAX_FETCHED_LEN: u64 = 64 << 30;
/// Largest encoded manifest accepted from a peer.
const MAX_ENCODED: usize = (MAX_CHUNKS as usize + 4) * 40;

/// The chunk hashes of one file, published by a node that holds it whole.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct Manifest {
    /// File length in bytes.
    pub len: u64,
    /// Chunk size in bytes (the last chunk may be shorter).
    pub chunk_size: u64,
    /// sha256 of the whole file: the file's identity.
    pub sha256: [u8; 32],
    /// sha256 of each chunk, in file order.
    pub chunks: Vec<[u8; 32]>,
}

/// A manifest received from a peer that cannot be right.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The bytes do not decode.
    #[error("undecodable manifest: {0}")]
    Decode(String),
    /// The fields contradict each other or the file asked for.
    #[error("inconsistent manifest: {0}")]
    Inconsistent(String),
}

impl Manifest {
    /// The chunk size used for a file of `len` bytes.
    pub fn chunk_size_for(len: u64) -> u64 {
        MIN_CHUNK.max(len.div_ceil(MAX_CHUNKS).next_power_of_two())
    }

    /// Reads `path` once, hashing the whole file and each chunk; `progress` gets the bytes
    /// read as it goes.
    pub fn build(path: &Path, mut progress: impl FnMut(u64)) -> std::io::Result<Manifest> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let chunk_size = Self::chunk_size_for(len);
        let mut whole = Sha256::new();
        let mut chunks = Vec::with_capacity(len.div_ceil(chunk_size) as usize);
        let mut buf = vec![0u8; chunk_size as usize];
        loop {
            let n = read_full(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            whole.update(&buf[..n]);
            chunks.push(Sha256::digest(&buf[..n]).into());
            progress(n as u64);
        }
        Ok(Manifest {
            len,
            chunk_size,
            sha256: whole.finalize().into(),
            chunks,
        })
    }

    /// Byte range of chunk `i`.
    pub fn chunk_range(&self, i: usize) -> Range<u64> {
        let start = i as u64 * self.chunk_size;
        start..(start + self.chunk_size).min(self.len)
    }

    /// Indices of the chunks that overlap `range` (clamped to the file).
    pub fn chunks_covering(&self, range: Range<u64>) -> Range<usize> {
        let end = range.end.min(self.len);
        if range.start >= end {
            return 0..0;
        }
        (range.start / self.chunk_size) as usize..end.div_ceil(self.chunk_size) as usize
    }

    /// The manifest as sent on the wire.
    pub fn encode(&self) -> Vec<u8> {
        bincode::encode_to_vec(self, bincode::config::standard()).expect("encoding to a Vec")
    }

    /// Decodes a manifest from a peer and checks it describes the file `sha256`.
    pub fn decode(bytes: &[u8], sha256: &[u8; 32]) -> Result<Manifest, ManifestError> {
        let config = bincode::config::standard().with_limit::<MAX_ENCODED>();
        let (manifest, used): (Manifest, usize) = bincode::decode_from_slice(bytes, config)
            .map_err(|e| ManifestError::Decode(e.to_string()))?;
        let bad = |why: String| Err(ManifestError::Inconsistent(why));
        if used != bytes.len() {
            return bad(format!("{} trailing bytes", bytes.len() - used));
        }
        if &manifest.sha256 != sha256 {
            return bad(format!(
                "describes {}, not {}",
                super::hex(&manifest.sha256),
                super::hex(sha256)
            ));
        }
        if manifest.len > MAX_FETCHED_LEN {
            return bad(format!(
                "a file of {} bytes (the most fetched from peers is {MAX_FETCHED_LEN})",
                manifest.len
            ));
        }
        if manifest.chunk_size != Self::chunk_size_for(manifest.len) {
            return bad(format!(
                "chunk size {} for a file of {} bytes",
                manifest.chunk_size, manifest.len
            ));
        }
        if manifest.chunks.len() as u64 != manifest.len.div_ceil(manifest.chunk_size) {
            return bad(format!(
                "{} chunk hashes for {} bytes",
                manifest.chunks.len(),
                manifest.len
            ));
        }
        Ok(manifest)
    }
}

/// Fills `buf` unless the file ends first; returns the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: u64) -> Manifest {
        let chunk_size = Manifest::chunk_size_for(len);
        Manifest {
            len,
            chunk_size,
            sha256: [7; 32],
            chunks: vec![[1; 32]; len.div_ceil(chunk_size) as usize],
        }
    }

    #[test]
    fn chunks_grow_with_the_file_and_stay_few() {
        assert_eq!(Manifest::chunk_size_for(90 << 20), 1 << 20);
        let big = 70u64 << 30;
        let size = Manifest::chunk_size_for(big);
        assert!(big.div_ceil(size) <= MAX_CHUNKS, "{size}");
    }

    #[test]
    fn covering_chunks() {
        let m = sample((5 << 20) + 10);
        assert_eq!(m.chunks.len(), 6);
        assert_eq!(m.chunks_covering(0..1), 0..1);
        assert_eq!(m.chunks_covering((1 << 20) - 1..(1 << 20) + 1), 0..2);
        assert_eq!(m.chunks_covering(5 << 20..u64::MAX), 5..6);
        assert_eq!(m.chunk_range(5), 5 << 20..(5 << 20) + 10);
        assert_eq!(m.chunks_covering(10..10), 0..0);
    }

    #[test]
    fn a_manifest_round_trips_and_lies_are_caught() {
        let m = sample(3 << 20);
        assert_eq!(Manifest::decode(&m.encode(), &m.sha256).unwrap(), m);
        assert!(Manifest::decode(&m.encode(), &[8; 32]).is_err());
        let mut short = m.clone();
        short.chunks.pop();
        assert!(Manifest::decode(&short.encode(), &m.sha256).is_err());
        let mut odd = m.clone();
        odd.chunk_size = 4096;
        assert!(Manifest::decode(&odd.encode(), &m.sha256).is_err());
        let mut trailing = m.encode();
        trailing.push(0);
        assert!(Manifest::decode(&trailing, &m.sha256).is_err());
        assert!(Manifest::decode(&[0xff; 64], &m.sha256).is_err());
        // A holder announcing a petabyte file would make the fetcher allocate huge chunks.
        let mut huge = sample(1 << 50);
        huge.chunks = vec![[1; 32]; MAX_CHUNKS as usize];
        assert!(Manifest::decode(&huge.encode(), &huge.sha256).is_err());
        let largest = sample(MAX_FETCHED_LEN);
        assert!(Manifest::decode(&largest.encode(), &largest.sha256).is_ok());
    }
}

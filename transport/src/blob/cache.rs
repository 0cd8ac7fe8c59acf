//! A file held in part: a sparse file of the full length plus its manifest, on disk.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::Manifest;

/// A cached copy of a file of which only some chunks may be present.
///
/// Lives at `dir/<sha256>.blob` with the manifest beside it (`.manifest`). Holes read as
/// zeros, and only chunks whose bytes match the manifest count as present: opening
/// re-verifies every chunk, so a fetch that was interrupted (or a cache damaged on disk)
/// resumes with exactly the chunks that are right.
#[derive(Debug)]
pub struct PartialFile {
    path: PathBuf,
    file: File,
    manifest: Manifest,
    have: Vec<bool>,
}

impl PartialFile {
    /// Opens the cached copy of `manifest`'s file under `dir`, creating it (empty, sparse)
    /// if absent, and finds which chunks it holds.
    pub fn open(dir: &Path, manifest: Manifest) -> std::io::Result<PartialFile> {
        std::fs::create_dir_all(dir)?;
        let name = super::hex(&manifest.sha256);
        let path = dir.join(format!("{name}.blob"));
        std::fs::write(dir.join(format!("{name}.manifest")), manifest.encode())?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if file.metadata()?.len() != manifest.len {
            file.set_len(manifest.len)?;
        }
        let mut have = vec![false; manifest.chunks.len()];
        let mut reader = &file;
        let mut buf = vec![0u8; manifest.chunk_size as usize];
        for (i, present) in have.iter_mut().enumerate() {
            let n = manifest.chunk_range(i).end - manifest.chunk_range(i).start;
            let chunk = &mut buf[..n as usize];
            reader.read_exact(chunk)?;
            *present = Sha256::digest(&*chunk).as_slice() == manifest.chunks[i];
        }
        Ok(PartialFile {
            path,
            file,
            manifest,
            have,
        })
    }

    /// Reopens a cache written earlier for the file `sha256`, if its manifest is there: a
    /// node restarting without a seeder in sight still has what it fetched.
    pub fn reopen(dir: &Path, sha256: &[u8; 32]) -> std::io::Result<Option<PartialFile>> {
        let name = super::hex(sha256);
        let bytes = match std::fs::read(dir.join(format!("{name}.manifest"))) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match Manifest::decode(&bytes, sha256) {
            Ok(manifest) => Ok(Some(Self::open(dir, manifest)?)),
            // A damaged manifest: fetch a fresh one.
            Err(_) => Ok(None),
        }
    }

    /// Where the (sparse) file is: open it like any complete file once the needed chunks are
    /// present.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The manifest the cache follows.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Whether chunk `i` is present and verified.
    pub fn has(&self, i: usize) -> bool {
        self.have.get(i).copied().unwrap_or(false)
    }

    /// Chunks overlapping `ranges` that are not present yet, ascending and without repeats.
    pub fn missing(&self, ranges: &[std::ops::Range<u64>]) -> Vec<usize> {
        let mut out: Vec<usize> = ranges
            .iter()
            .flat_map(|r| self.manifest.chunks_covering(r.clone()))
            .filter(|&i| !self.has(i))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Bytes of the file present and verified.
    pub fn present_bytes(&self) -> u64 {
        (0..self.have.len())
            .filter(|&i| self.have[i])
            .map(|i| {
                let r = self.manifest.chunk_range(i);
                r.end - r.start
            })
            .sum()
    }

    /// Whether every chunk is present (the file is then the whole, verified file).
    pub fn is_complete(&self) -> bool {
        self.have.iter().all(|&h| h)
    }

    /// Stores chunk `i` if `bytes` are exactly what the manifest says it holds.
    pub fn write_chunk(&mut self, i: usize, bytes: &[u8]) -> Result<(), ChunkRejected> {
        let Some(expected) = self.manifest.chunks.get(i) else {
            return Err(ChunkRejected(format!(
                "chunk {i} of a file with {} chunks",
                self.manifest.chunks.len()
            )));
        };
        let range = self.manifest.chunk_range(i);
        if bytes.len() as u64 != range.end - range.start {
            return Err(ChunkRejected(format!(
                "chunk {i} has {} bytes, expected {}",
                bytes.len(),
                range.end - range.start
            )));
        }
        if Sha256::digest(bytes).as_slice() != expected {
            return Err(ChunkRejected(format!(
                "chunk {i} does not match its sha256"
            )));
        }
        self.file
            .write_all_at(bytes, range.start)
            .map_err(|e| ChunkRejected(format!("writing chunk {i}: {e}")))?;
        self.have[i] = true;
        Ok(())
    }
}

/// A chunk that was not stored, and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ChunkRejected(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("shoal-blob-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Dir(d)
    }

    #[test]
    fn chunks_are_verified_kept_and_found_again_after_a_restart() {
        let src = dir("src");
        std::fs::create_dir_all(&src.0).unwrap();
        let data: Vec<u8> = (0..(3u32 << 20) + 5).map(|i| (i * 7 % 251) as u8).collect();
        let file = src.0.join("model");
        std::fs::write(&file, &data).unwrap();
        let manifest = Manifest::build(&file, |_| {}).unwrap();
        assert_eq!(manifest.chunks.len(), 4);

        let cache = dir("cache");
        let mut part = PartialFile::open(&cache.0, manifest.clone()).unwrap();
        assert_eq!(part.missing(&[0..manifest.len, 5..6]), vec![0, 1, 2, 3]);
        let r = manifest.chunk_range(2);
        let chunk = &data[r.start as usize..r.end as usize];
        let mut bad = chunk.to_vec();
        bad[100] ^= 1;
        assert!(part.write_chunk(2, &bad).is_err());
        assert!(part.write_chunk(2, &chunk[1..]).is_err());
        assert!(part.write_chunk(9, chunk).is_err());
        assert!(!part.has(2));
        part.write_chunk(2, chunk).unwrap();
        assert_eq!(
            part.missing(&[r.start + 1..r.end + 1, r.start..r.start + 1]),
            vec![3]
        );
        assert_eq!(part.present_bytes(), 1 << 20);
        drop(part);

        // A restart finds chunk 2 again; damage on disk is noticed.
        let part = PartialFile::reopen(&cache.0, &manifest.sha256)
            .unwrap()
            .unwrap();
        assert!(part.has(2) && !part.has(1) && !part.is_complete());
        let f = OpenOptions::new().write(true).open(part.path()).unwrap();
        f.write_all_at(&[0xff], r.start + 10).unwrap();
        let part = PartialFile::open(&cache.0, manifest.clone()).unwrap();
        assert!(!part.has(2));
        assert!(PartialFile::reopen(&cache.0, &[0; 32]).unwrap().is_none());
    }
}

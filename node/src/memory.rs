//! What this process holds in memory, read from `/proc/self/status`.
//!
//! A shard copies the weights it runs out of the mapped file into its own (anonymous)
//! memory, beside the runtime, network buffers, scratch rows and KV caches; file-backed
//! pages are the binary and whatever of the model file was read through the map. The node
//! advertises its anonymous memory at start, before it loads any weights, as its measured
//! overhead, and `/metrics` exports both kinds against its budget.

/// Resident memory of this process, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// All resident pages (`VmRSS`).
    pub total: u64,
    /// Anonymous pages: heap, stacks, loaded weights, KV (`RssAnon`).
    pub anon: u64,
    /// File-backed pages: the binary and pages read through the model's map (`RssFile`).
    pub file: u64,
}

/// This process's resident memory, or `None` where `/proc` does not say (not Linux).
pub fn resident() -> Option<Resident> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse(&status)
}

fn parse(status: &str) -> Option<Resident> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some(Resident {
        total: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        file: field("RssFile:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_kernels_fields() {
        let status =
            "Name:\tshoal\nVmRSS:\t   51200 kB\nRssAnon:\t   20480 kB\nRssFile:\t   30720 kB\n";
        assert_eq!(
            parse(status),
            Some(Resident {
                total: 50 << 20,
                anon: 20 << 20,
                file: 30 << 20
            })
        );
        assert_eq!(parse("Name:\tshoal\n"), None);
    }

    #[test]
    fn this_process_has_some() {
        let r = resident().expect("Linux /proc");
        assert!(r.total > 0 && r.anon > 0 && r.total >= r.anon);
    }
}

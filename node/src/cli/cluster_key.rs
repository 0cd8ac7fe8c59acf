//! The cluster key on the command line: `--cluster-key-file` / `--insecure` (shared by every
//! command that joins a data plane) and `shoal keygen`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tracing::{info, warn};
use transport::cluster_key::ClusterKey;
use transport::discovery::Keypair;
use transport::quic::{EndpointConfig, Identity, Libp2pIdentity};

/// How a node proves it belongs to the cluster.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct KeyArgs {
    /// File holding the cluster's secret key (make one with `shoal keygen --out FILE` and copy
    /// it to every node). Peers without it are never admitted.
    #[arg(long, env = "SHOAL_CLUSTER_KEY_FILE", conflicts_with = "insecure")]
    cluster_key_file: Option<PathBuf>,
    /// Run without a cluster key: ANY machine that reaches this node can join the cluster and
    /// send it frames. For local experiments only.
    #[arg(long, env = "SHOAL_INSECURE")]
    insecure: bool,
}

impl KeyArgs {
    /// The key to use, `None` with `--insecure` (after a loud warning), or an error saying
    /// how to get one.
    pub(crate) fn load(&self) -> anyhow::Result<Option<ClusterKey>> {
        match (&self.cluster_key_file, self.insecure) {
            (Some(path), _) => {
                let key = ClusterKey::from_file(path)?;
                info!(key_id = %key.id(), "private cluster: peers must hold this key");
                Ok(Some(key))
            }
            (None, true) => {
                warn!(
                    "INSECURE: no cluster key. Any machine that can reach this node may join the \
                     cluster, take layers and send it frames. Use --cluster-key-file outside a lab."
                );
                Ok(None)
            }
            (None, false) => anyhow::bail!(
                "no cluster key: pass --cluster-key-file FILE (make one with \
                 `shoal keygen --out FILE` and copy it to every node), or --insecure for a local \
                 experiment"
            ),
        }
    }

    /// Data-plane settings of a static-plan process (`shoal stage`, `shoal generate
    /// --pipeline`): a fresh libp2p identity for its certificate, and the key.
    pub(crate) fn endpoint(&self) -> anyhow::Result<EndpointConfig> {
        let identity = Identity::from_keypair(&Keypair::generate_ed25519())?;
        let mut config = shoal::pipeline::endpoint_config(identity, Arc::new(Libp2pIdentity));
        config.cluster_key = self.load()?;
        Ok(config)
    }
}

#[derive(clap::Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the new key (refuses to overwrite; readable by the owner only).
    #[arg(long)]
    out: PathBuf,
}

/// `shoal keygen`: writes 32 random bytes as hex, mode 0600.
pub(crate) fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let contents = ClusterKey::generate_file_contents();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.out)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never overwritten)",
                args.out.display()
            )
        })?;
    file.write_all(contents.as_bytes())?;
    let key = ClusterKey::from_secret(contents.trim().as_bytes());
    println!(
        "wrote cluster key {} (id {}); copy it to every node and pass --cluster-key-file",
        args.out.display(),
        key.id()
    );
    Ok(())
}

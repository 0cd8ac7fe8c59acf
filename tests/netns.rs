//! Network namespaces joined by a bridge, made by a test and removed when it ends: several
//! hosts with their own addresses on one machine, where mDNS works (it ignores loopback) and
//! nothing reaches the host's own interfaces.

use std::process::Command;

/// A bridge namespace and node namespaces `10.{subnet}.0.{i+1}/24` attached to it. Removed on
/// drop.
pub struct Topology {
    tag: String,
    subnet: u8,
    bridge: String,
    nodes: Vec<String>,
}

impl Topology {
    /// A bridge and `n` node namespaces, named after `tag` and this process id.
    pub fn create(tag: &str, subnet: u8, n: usize) -> Result<Self, String> {
        let tag = format!("{tag}-{}", std::process::id());
        let mut topo = Self {
            bridge: format!("{tag}-br"),
            tag,
            subnet,
            nodes: Vec::new(),
        };
        let br = topo.bridge.clone();
        ip(&["netns", "add", &br])?;
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for _ in 0..n {
            topo.add_node()?;
        }
        Ok(topo)
    }

    /// Adds one more node namespace; returns its name.
    pub fn add_node(&mut self) -> Result<String, String> {
        let i = self.nodes.len();
        let ns = format!("{}-n{}", self.tag, i + 1);
        let port = format!("p{i}");
        ip(&["netns", "add", &ns])?;
        self.nodes.push(ns.clone());
        let br = &self.bridge;
        ip(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", br,
        ])?;
        ip(&["-n", br, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", br, "link", "set", &port, "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", self.addr(i)),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        Ok(ns)
    }

    /// The node namespaces, in creation order.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The IPv4 address of node `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("10.{}.0.{}", self.subnet, i + 1)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends inside it.
        for ns in self.nodes.iter().chain([&self.bridge]) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Runs `ip ARGS`, with its stderr as the error.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Why namespace tests cannot run here (not root, no `ip`), if they cannot.
pub fn skip_reason() -> Option<String> {
    let euid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&euid.stdout).trim() != "0" {
        return Some("not root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) not found".into());
    }
    None
}

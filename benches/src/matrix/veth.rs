//! The matrix across a veth pair: two network namespaces the run makes, the client in one and
//! the network servers in the other, so that QUIC and TCP cross a real link with a chosen MTU
//! instead of loopback's 64 KiB.
//!
//! The run starts itself again inside the client's namespace (`ip netns exec`), with
//! [`INSIDE`] naming the servers' namespace and address; the namespaces, and with them the
//! pair, are deleted when the outer run ends. Needs root and `ip` (iproute2).

use std::process::{Command, ExitStatus};

use super::Error;

/// Set in the run started inside the client's namespace: `namespace,address,mtu` of the
/// servers' end.
pub(crate) const INSIDE: &str = "COURIER_MATRIX_VETH";

/// The servers' end of the pair, as the run inside sees it.
#[derive(Debug, Clone)]
pub struct VethEnd {
    /// The servers' network namespace.
    pub netns: String,
    /// The servers' address on the pair.
    pub host: std::net::IpAddr,
    /// The pair's MTU.
    pub mtu: u32,
}

impl VethEnd {
    /// The servers' end, if this run was started inside the client's namespace.
    pub fn inside() -> Result<Option<VethEnd>, Error> {
        let Ok(value) = std::env::var(INSIDE) else {
            return Ok(None);
        };
        let mut parts = value.split(',');
        let (Some(netns), Some(host), Some(mtu)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{INSIDE}={value:?}: expected namespace,address,mtu").into());
        };
        Ok(Some(VethEnd {
            netns: netns.to_owned(),
            host: host.parse()?,
            mtu: mtu.parse()?,
        }))
    }
}

/// Two namespaces joined by a veth pair; deleted when dropped.
struct Pair {
    client: String,
    server: String,
}

fn ip(args: &[&str]) -> Result<(), Error> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (install iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {} (the veth run needs root)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

impl Pair {
    fn make(mtu: u32) -> Result<(Pair, String), Error> {
        let id = std::process::id();
        let pair = Pair {
            client: format!("courier-matrix-c-{id}"),
            server: format!("courier-matrix-s-{id}"),
        };
        let (client_ip, server_ip) = ("10.231.0.1", "10.231.0.2");
        let (vc, vs) = (
            format!("cmc{}", id % 100_000),
            format!("cms{}", id % 100_000),
        );
        ip(&["netns", "add", &pair.client])?;
        ip(&["netns", "add", &pair.server])?;
        ip(&[
            "link",
            "add",
            &vc,
            "netns",
            &pair.client,
            "type",
            "veth",
            "peer",
            "name",
            &vs,
            "netns",
            &pair.server,
        ])?;
        let mtu = mtu.to_string();
        for (ns, dev, addr) in [
            (&pair.client, &vc, client_ip),
            (&pair.server, &vs, server_ip),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "mtu", &mtu, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok((pair, server_ip.to_owned()))
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the pair, and with it the other end.
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Makes the pair with `mtu`, runs this program again with its arguments inside the client's
/// namespace, and deletes the pair: the exit status of the run inside.
pub fn run_across(mtu: u32) -> Result<ExitStatus, Error> {
    let (pair, server_ip) = Pair::make(mtu)?;
    let status = Command::new("ip")
        .args(["netns", "exec", &pair.client])
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env(INSIDE, format!("{},{server_ip},{mtu}", pair.server))
        .status()?;
    drop(pair);
    Ok(status)
}

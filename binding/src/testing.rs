//! A real etcd server for tests: started on free ports in a temporary directory, stopped and
//! removed when dropped.
//!
//! It runs the `etcd` binary on the `PATH` (Debian: `apt-get install etcd-server`).

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use courier::AddressError;

use crate::EtcdDirectory;

/// A running etcd server, for tests and examples. Killed, and its data removed, on drop.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    dir: PathBuf,
    endpoint: String,
}

impl Etcd {
    /// Starts etcd on free ports of 127.0.0.1 and waits (up to 30 s) until it answers.
    pub async fn start() -> Result<Etcd, AddressError> {
        Etcd::start_on(IpAddr::V4(Ipv4Addr::LOCALHOST)).await
    }

    /// Starts etcd serving clients on `ip` (and on 127.0.0.1), on free ports, and waits (up to
    /// 30 s) until it answers.
    pub async fn start_on(ip: IpAddr) -> Result<Etcd, AddressError> {
        let fail = |what: String| AddressError::Directory(format!("starting etcd: {what}"));
        let free_port = |ip: IpAddr| -> Result<u16, AddressError> {
            // The port is free now; etcd binds it a moment later. Another process taking it in
            // between makes etcd exit, which `start_on` reports.
            TcpListener::bind((ip, 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| fail(format!("no free port on {ip}: {e}")))
        };
        let (client_port, peer_port) = (free_port(ip)?, free_port(ip)?);
        let dir =
            std::env::temp_dir().join(format!("courier-etcd-{}-{client_port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        let host = match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            IpAddr::V4(v4) => v4.to_string(),
        };
        let endpoint = format!("http://{host}:{client_port}");
        let mut client_urls = endpoint.clone();
        if !ip.is_loopback() {
            client_urls.push_str(&format!(",http://127.0.0.1:{client_port}"));
        }
        let peer = format!("http://{host}:{peer_port}");
        let log = std::fs::File::create(dir.join("etcd.log"))
            .map_err(|e| fail(format!("log file: {e}")))?;
        let log_err = log
            .try_clone()
            .map_err(|e| fail(format!("log file: {e}")))?;
        let child = Command::new("etcd")
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client_urls}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "cannot run `etcd` ({e}); install it (Debian: apt-get install etcd-server)"
                ))
            })?;
        let mut etcd = Etcd {
            child,
            dir,
            endpoint,
        };
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    async fn wait_ready(&mut self) -> Result<(), AddressError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(AddressError::Directory(format!(
                    "etcd exited ({status}); its log: {}",
                    std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
                )));
            }
            let answered = match EtcdDirectory::connect([&self.endpoint]).await {
                Ok(directory) => {
                    use courier::directory::Resolver;
                    directory.resolve("ready").await.map(drop)
                }
                Err(e) => Err(e),
            };
            match answered {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                // Polling a process the test cannot await: etcd says nothing when it is ready.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The client URL: `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A directory client of this server.
    pub async fn directory(&self) -> Result<EtcdDirectory, AddressError> {
        EtcdDirectory::connect([&self.endpoint]).await
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

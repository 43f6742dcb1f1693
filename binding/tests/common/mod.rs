//! What the binding tests share: a service that says where it runs and how it was reached,
//! and child processes that serve it.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use courier::address::Transports;
use courier::{Context, Peer};
use courier_quic::{ClientTls, DevCert, QuicTransport, ServerTls};
use courier_shm::ShmTransport;
use tokio::sync::mpsc;

#[courier::service]
pub trait Where {
    /// The instance's name.
    async fn instance(&self) -> String;
    /// How the caller reached it: `network`, `process` or `in-process`.
    async fn reached_by(&self, cx: Context) -> String;
}

pub struct Here(pub String);

impl Where for Here {
    async fn instance(&self) -> String {
        self.0.clone()
    }
    async fn reached_by(&self, cx: Context) -> String {
        match cx.peer() {
            Peer::Network { .. } => "network",
            Peer::Process { .. } => "process",
            Peer::InProcess { .. } => "in-process",
            _ => "other",
        }
        .to_owned()
    }
}

/// Every transport, trusting (and serving with) the test certificate in `dir`, which the
/// first caller makes and every process of the test then reads.
pub fn transports(dir: &std::path::Path) -> Transports {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() {
        let dev = DevCert::generate(vec!["localhost".into(), "courier.test".into()]).expect("cert");
        std::fs::write(&key, dev.private_key_pem()).expect("write key");
        std::fs::write(&cert, dev.certificate_pem()).expect("write cert");
    }
    Transports::new()
        .with(
            QuicTransport::new()
                .server_tls(ServerTls::from_pem_files(&cert, &key).expect("server tls"))
                .client_tls(ClientTls::from_pem_file(&cert).expect("client tls")),
        )
        .with(ShmTransport::default())
}

/// A scratch directory for one test, removed when dropped.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("courier-binding-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process of this test binary running the ignored helper test `helper`, with `env`;
/// its stdout lines arrive on `lines`.
pub struct ChildProcess {
    pub child: Child,
    pub lines: mpsc::UnboundedReceiver<String>,
}

impl ChildProcess {
    pub fn start(wrapper: &[&str], helper: &str, env: &[(&str, String)]) -> ChildProcess {
        let exe = std::env::current_exe().expect("test binary");
        let mut command = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        command
            .args([
                "--exact",
                helper,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProcess { child, lines }
    }

    /// What follows `prefix` on the first line that has it.
    pub async fn line(&mut self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv()
                .await
                .unwrap_or_else(|| panic!("the child ended before printing `{prefix}`"));
            // The test harness may print its own words before ours on the same line.
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].trim().to_owned();
            }
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

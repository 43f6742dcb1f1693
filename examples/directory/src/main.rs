//! Binding by name through etcd: a server registers itself, a client finds it by name.
//!
//! ```sh
//! cargo run -p courier-example-directory --bin directory            # the whole demo
//! ```
//!
//! The demo starts its own etcd (the `etcd` binary must be on the `PATH`; Debian:
//! `apt-get install etcd-server`), starts a server process that listens on QUIC and on shared
//! memory and registers both addresses under the name `greeter`, then finds `greeter` by name
//! twice: once as a client on the same host (which picks shared memory by itself), once as a
//! client that prefers the network (QUIC). The parts run on their own too:
//!
//! ```sh
//! directory server --etcd http://10.0.0.5:2379 --dir /run/greeter --advertise 10.0.0.7
//! directory client --etcd http://10.0.0.5:2379 --dir /run/greeter [--quic]
//! ```
//!
//! `--dir` holds the shared-memory socket and the server's development certificate, which the
//! client trusts (in production: certificates from your CA, and `?ca=` or
//! `QuicTransport::client_tls`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use courier::address::Transports;
use courier::directory::{InstanceRecord, Prefer, Registrar};
use courier::{Client, Server};
use courier_binding::EtcdDirectory;
use courier_cbor::Cbor;
use courier_quic::{ClientTls, DevCert, QuicTransport, ServerTls};
use courier_shm::ShmTransport;
use tokio::io::{AsyncBufReadExt, BufReader};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The service found by name.
#[courier::service]
pub trait Greeter {
    /// A greeting from the server process.
    async fn greet(&self, name: String) -> String;
}

struct Greetings;

impl Greeter for Greetings {
    async fn greet(&self, name: String) -> String {
        format!("hello, {name}, from process {}", std::process::id())
    }
}

/// The command line: `[demo] | server … | client …`.
struct Args {
    command: String,
    etcd: Option<String>,
    dir: Option<PathBuf>,
    advertise: Option<String>,
    quic: bool,
}

fn args() -> Result<Args, Error> {
    let mut args = Args {
        command: "demo".into(),
        etcd: None,
        dir: None,
        advertise: None,
        quic: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "demo" | "server" | "client" => args.command = arg.clone(),
            "--etcd" => args.etcd = Some(value()?),
            "--dir" => args.dir = Some(PathBuf::from(value()?)),
            "--advertise" => args.advertise = Some(value()?),
            "--quic" => args.quic = true,
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = args()?;
    match args.command.as_str() {
        "server" => {
            let etcd = args.etcd.ok_or("server needs --etcd")?;
            let dir = args.dir.ok_or("server needs --dir")?;
            server(&etcd, &dir, args.advertise).await
        }
        "client" => {
            let etcd = args.etcd.ok_or("client needs --etcd")?;
            let dir = args.dir.ok_or("client needs --dir")?;
            client(&etcd, &dir, args.quic).await
        }
        _ => demo().await,
    }
}

/// Starts etcd and a server process, then finds the server by name twice.
async fn demo() -> Result<(), Error> {
    let etcd = courier_binding::testing::Etcd::start().await?;
    println!("etcd is up at {}", etcd.endpoint());
    let dir = std::env::temp_dir().join(format!("courier-directory-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let mut server = tokio::process::Command::new(std::env::current_exe()?)
        .args(["server", "--etcd", etcd.endpoint(), "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = server.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    // The server says when it is registered; until then, a lookup could find nothing.
    loop {
        let line = lines
            .next_line()
            .await?
            .ok_or("the server exited before registering")?;
        println!("[server] {line}");
        if line.starts_with("registered") {
            break;
        }
    }
    let result = async {
        client(etcd.endpoint(), &dir, false).await?;
        client(etcd.endpoint(), &dir, true).await
    }
    .await;
    server.kill().await?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Listens on QUIC and shared memory, registers both under `greeter`, serves until Ctrl-C,
/// then leaves the directory and shuts down gracefully.
async fn server(etcd: &str, dir: &Path, advertise: Option<String>) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    let cert = DevCert::generate(vec!["localhost".to_owned()])?;
    std::fs::write(dir.join("cert.pem"), cert.certificate_pem())?;
    Transports::install(QuicTransport::new().server_tls(ServerTls::dev(&cert)));
    Transports::install(ShmTransport::default());

    let server = Server::builder(Cbor::default())
        .service(GreeterServer::new(Greetings))
        .build();
    let host = advertise.as_deref().unwrap_or("127.0.0.1");
    let shm = format!("shm://{}", dir.join("greeter.sock").display());
    let listeners = server.listen([format!("quic://{host}:0"), shm])?;
    let addresses = listeners.addresses().into_iter().map(|a| match a.scheme() {
        // The development certificate is for `localhost`, whatever address it is reached at.
        "quic" => a.with_param("server_name", "localhost"),
        _ => a,
    });
    let record = InstanceRecord::new("greeter", addresses).interfaces(server.interfaces());
    // A directory that other hosts read gets only addresses they can reach: without
    // --advertise, this demo stays on one host and says so.
    let directory = EtcdDirectory::connect([etcd])
        .await?
        .allow_local_only(advertise.is_none());
    let registration = directory.register(record, Duration::from_secs(10)).await?;
    let shown: Vec<String> = registration
        .record()
        .addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    println!(
        "registered `greeter` instance {} at {}",
        registration.record().instance,
        shown.join(", ")
    );

    tokio::select! {
        served = server.serve_all(listeners) => return Ok(served?),
        _ = tokio::signal::ctrl_c() => {}
    }
    // Leave the directory first, so that clients move elsewhere (their calls in flight finish
    // here), then stop: new calls get the retryable `Unavailable`, running ones get 5 s.
    registration.withdraw().await?;
    let report = server.shutdown(Duration::from_secs(5)).await;
    println!(
        "stopped: {} calls were running, {} cancelled",
        report.running, report.cancelled
    );
    Ok(())
}

/// Finds `greeter` by name and calls it; says which transport it took.
async fn client(etcd: &str, dir: &Path, quic: bool) -> Result<(), Error> {
    Transports::install(
        QuicTransport::new().client_tls(ClientTls::from_pem_file(dir.join("cert.pem"))?),
    );
    Transports::install(ShmTransport::default());
    let directory = Arc::new(EtcdDirectory::connect([etcd]).await?);
    let mut builder = Client::builder(Cbor::default());
    if quic {
        builder = builder.prefer(Prefer::Schemes(vec!["quic".into()]));
    }
    let client = builder.connect_named(directory, "greeter").await?;
    let address = client.address().ok_or("no address")?;
    let greeting = GreeterClient::new(client.clone())
        .greet("directory demo".into())
        .await?;
    println!(
        "client ({}): found `greeter` over {} at {address}: {greeting}",
        if quic {
            "prefers the network"
        } else {
            "same host"
        },
        address.scheme()
    );
    Ok(())
}

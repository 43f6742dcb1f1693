//! A key-value server over QUIC, for `quic_client` to call from another process or machine.
//!
//! ```text
//! cargo run --release -p courier-examples --bin quic_server -- [ADDR] [CERT_PEM_OUT] [NAME...]
//! ```
//!
//! ADDR defaults to `127.0.0.1:4433`. The server makes a development certificate for the
//! NAMEs (default: `localhost` and `127.0.0.1`) and writes it to CERT_PEM_OUT (default
//! `courier-dev-cert.pem` in the system's temporary directory) for clients to trust. To serve
//! another machine, bind `0.0.0.0:4433`, name the host (`quic_server 0.0.0.0:4433 cert.pem
//! myhost`) and copy the certificate file to the client. Both codecs are offered. Ctrl-C stops
//! it gracefully: running calls get 5 s to finish.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use courier::Server;
use courier_cbor::Cbor;
use courier_examples::{ctrl_c, serve_until, KvServer, KvStore};
use courier_quic::{DevCert, QuicListener, QuicOptions, ServerTls};
use courier_xdr::Xdr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:4433").parse()?;
    let cert_out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("courier-dev-cert.pem"));
    let mut names: Vec<String> = args.collect();
    if names.is_empty() {
        names = vec!["localhost".into(), "127.0.0.1".into()];
    }

    let cert = DevCert::generate(names.clone())?;
    std::fs::write(&cert_out, cert.certificate_pem())?;
    let listener = QuicListener::bind(addr, ServerTls::dev(&cert), QuicOptions::default())?;
    let stop = ctrl_c()?;
    println!(
        "serving Kv on {} (codecs cbor, xdr) as {:?}; certificate in {}",
        listener.local_addr()?,
        names,
        cert_out.display()
    );
    let server = Server::builder((Cbor::default(), Xdr::default()))
        .service(KvServer::new(KvStore::default()))
        .build();
    serve_until(&server, listener, stop, Duration::from_secs(5)).await?;
    Ok(())
}

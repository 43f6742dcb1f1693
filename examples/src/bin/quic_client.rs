//! Calls the `quic_server` example from another process or machine.
//!
//! ```text
//! cargo run --release -p courier-examples --bin quic_client -- [ADDR] [CERT_PEM] [NAME] [CODEC]
//! ```
//!
//! ADDR defaults to `127.0.0.1:4433`, CERT_PEM to the file `quic_server` wrote in the system's
//! temporary directory, NAME (the name the certificate must carry) to `localhost`, CODEC
//! (`cbor` or `xdr`) to `cbor`.

use std::net::SocketAddr;
use std::path::PathBuf;

use courier::{Client, Codec};
use courier_cbor::Cbor;
use courier_examples::KvClient;
use courier_quic::{ClientTls, QuicConnector, QuicOptions};
use courier_xdr::Xdr;

async fn session<C: Codec>(codec: C, connector: &QuicConnector) -> Result<(), courier::RpcError> {
    let kv = KvClient::new(Client::builder(codec).connect(connector).await?);
    let who = format!("{}-client-{}", C::NAME, std::process::id());
    let replaced = kv.put(who.clone(), "hello over QUIC".into()).await?;
    println!("put {who:?} (replaced {replaced:?})");
    println!("get {who:?} -> {:?}", kv.get(who.clone()).await?);
    println!("keys on the server: {:?}", kv.keys().await?);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:4433").parse()?;
    let cert = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("courier-dev-cert.pem"));
    let name = args.next().unwrap_or_else(|| "localhost".into());
    let codec = args.next().unwrap_or_else(|| "cbor".into());

    let tls = ClientTls::from_pem_file(&cert)?;
    let connector = QuicConnector::new(addr, name, tls, QuicOptions::default())?;
    match codec.as_str() {
        "xdr" => session(Xdr::default(), &connector).await?,
        _ => session(Cbor::default(), &connector).await?,
    }
    Ok(())
}

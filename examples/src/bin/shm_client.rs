//! Calls the `shm_server` example from another process on the same machine.
//!
//! ```text
//! cargo run --release -p courier-examples --bin shm_client -- [SOCKET_PATH] [CODEC]
//! ```
//!
//! SOCKET_PATH defaults to `courier-kv.sock` in the system's temporary directory, CODEC (`cbor`
//! or `xdr`) to `cbor`.

use std::path::PathBuf;

use courier::{Client, Codec};
use courier_cbor::Cbor;
use courier_examples::KvClient;
use courier_shm::{ShmConnector, ShmOptions};
use courier_xdr::Xdr;

async fn session<C: Codec>(codec: C, connector: &ShmConnector) -> Result<(), courier::RpcError> {
    let kv = KvClient::new(Client::builder(codec).connect(connector).await?);
    println!("connected; the server is {:?}", kv.client().peer());
    let key = format!("{}-client-{}", C::NAME, std::process::id());
    kv.put(key.clone(), "hello through shared memory".into())
        .await?;
    println!("get {key:?} -> {:?}", kv.get(key.clone()).await?);
    println!("keys on the server: {:?}", kv.keys().await?);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("courier-kv.sock"));
    let connector = ShmConnector::new(&path, ShmOptions::default());
    match args.next().as_deref() {
        Some("xdr") => session(Xdr::default(), &connector).await?,
        _ => session(Cbor::default(), &connector).await?,
    }
    Ok(())
}

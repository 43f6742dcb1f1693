//! A key-value server over shared memory, for `shm_client` to call from another process on the
//! same machine.
//!
//! ```text
//! cargo run --release -p courier-examples --bin shm_server -- [SOCKET_PATH]
//! ```
//!
//! SOCKET_PATH defaults to `courier-kv.sock` in the system's temporary directory. The socket is
//! owner-only, so clients must run as the same user. Both codecs are offered. Ctrl-C stops it
//! gracefully (running calls get 5 s to finish); the socket file is removed on exit.

use std::path::PathBuf;
use std::time::Duration;

use courier::Server;
use courier_cbor::Cbor;
use courier_examples::{ctrl_c, serve_until, KvServer, KvStore};
use courier_shm::{ShmListener, ShmOptions};
use courier_xdr::Xdr;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("courier-kv.sock"));
    let listener = ShmListener::bind(&path, ShmOptions::default())?;
    let stop = ctrl_c()?;
    println!(
        "serving Kv over shared memory at {} (codecs cbor, xdr)",
        path.display()
    );
    let server = Server::builder((Cbor::default(), Xdr::default()))
        .service(KvServer::new(KvStore::default()))
        .build();
    serve_until(&server, listener, stop, Duration::from_secs(5)).await?;
    Ok(())
}

//! The `Ping` service and a server for it on loopback, shared by the QUIC test files that
//! need only a service to call.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use courier::Server;
use courier_cbor::Cbor;
use courier_quic::{DevCert, QuicListener, QuicOptions, ServerTls};

#[courier::service]
pub trait Ping {
    /// Returns its argument.
    async fn ping(&self, v: u64) -> u64;
    /// At-most-once: counts its runs per id in the server's [`Runs`]; returns the id.
    async fn record(&self, id: u64) -> u64;
}

/// How many times each id ran `record` on a server.
pub type Runs = Arc<Mutex<HashMap<u64, u32>>>;

struct Pong(Runs);

impl Ping for Pong {
    async fn ping(&self, v: u64) -> u64 {
        v
    }
    async fn record(&self, id: u64) -> u64 {
        *self.0.lock().unwrap().entry(id).or_insert(0) += 1;
        id
    }
}

/// Every test's body runs within this, so a hang fails the test instead of the run.
pub async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test timed out")
}

/// Starts a `Ping` server on a loopback port with `cert`; returns its address.
pub fn serve(cert: &DevCert, options: QuicOptions) -> SocketAddr {
    serve_counting(cert, options).0
}

/// [`serve`], also returning the server's count of `record` runs.
pub fn serve_counting(cert: &DevCert, options: QuicOptions) -> (SocketAddr, Runs) {
    let listener = QuicListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerTls::dev(cert),
        options,
    )
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let runs = Runs::default();
    let server = Server::builder(Cbor::default())
        .service(PingServer::new(Pong(Arc::clone(&runs))))
        .build();
    tokio::spawn(async move { server.serve(listener).await });
    (addr, runs)
}

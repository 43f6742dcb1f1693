//! The `Ping` service and a server for it on loopback, shared by the QUIC test files that
//! need only a service to call.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use courier::Server;
use courier_cbor::Cbor;
use courier_quic::{DevCert, QuicListener, QuicOptions, ServerTls};

#[courier::service]
pub trait Ping {
    /// Returns its argument.
    async fn ping(&self, v: u64) -> u64;
}

struct Pong;

impl Ping for Pong {
    async fn ping(&self, v: u64) -> u64 {
        v
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
    let listener = QuicListener::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerTls::dev(cert),
        options,
    )
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = Server::builder(Cbor::default())
        .service(PingServer::new(Pong))
        .build();
    tokio::spawn(async move { server.serve(listener).await });
    addr
}

//! A test service with probes: each handler reports what happened to it on channels the test
//! reads, so tests synchronise on events, never on sleeps.
#![allow(dead_code, clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use courier::transport::mem;
use courier::{Client, Context, RpcError, Server};
use courier_cbor::Cbor;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};

/// Every test's async body runs within this, so a hang fails the test instead of the run.
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test timed out")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DivError {
    ByZero,
    Overflow { a: i32 },
}

#[courier::service]
pub trait Lab {
    /// Returns its argument.
    async fn echo(&self, v: u64) -> u64;
    /// Returns the bytes it was given.
    async fn echo_bytes(&self, v: Vec<u8>) -> Vec<u8>;
    /// Reports start, then waits for the gate; reports being dropped if it is.
    async fn hold(&self, tag: u32) -> u32;
    /// Divides, with a typed error.
    async fn div(&self, a: i32, b: i32) -> Result<i32, DivError>;
    /// One-way: reports the value.
    #[oneway]
    async fn note(&self, v: u64);
    /// Calls back the client's `Helper` on the same connection.
    async fn ask_back(&self, ctx: Context, x: u32) -> Result<u32, String>;
    /// Panics.
    async fn explode(&self) -> u8;
    /// Says who called.
    async fn whoami(&self, ctx: Context) -> String;
}

#[courier::service(id = 0x4845_4C50, version = 3)]
pub trait Helper {
    /// Triples.
    async fn triple(&self, x: u32) -> u32;
}

pub struct Probes {
    pub started: mpsc::UnboundedReceiver<u32>,
    pub dropped: mpsc::UnboundedReceiver<u32>,
    pub finished: mpsc::UnboundedReceiver<u32>,
    pub noted: mpsc::UnboundedReceiver<u64>,
    pub gate: Arc<Semaphore>,
}

pub struct LabImpl {
    started: mpsc::UnboundedSender<u32>,
    dropped: mpsc::UnboundedSender<u32>,
    finished: mpsc::UnboundedSender<u32>,
    noted: mpsc::UnboundedSender<u64>,
    gate: Arc<Semaphore>,
}

pub fn lab() -> (LabImpl, Probes) {
    let (started, started_rx) = mpsc::unbounded_channel();
    let (dropped, dropped_rx) = mpsc::unbounded_channel();
    let (finished, finished_rx) = mpsc::unbounded_channel();
    let (noted, noted_rx) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    (
        LabImpl {
            started,
            dropped,
            finished,
            noted,
            gate: Arc::clone(&gate),
        },
        Probes {
            started: started_rx,
            dropped: dropped_rx,
            finished: finished_rx,
            noted: noted_rx,
            gate,
        },
    )
}

/// Reports its tag when dropped before being defused.
struct DropGuard {
    tag: u32,
    tx: mpsc::UnboundedSender<u32>,
    armed: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.tx.send(self.tag);
        }
    }
}

impl Lab for LabImpl {
    async fn echo(&self, v: u64) -> u64 {
        v
    }

    async fn echo_bytes(&self, v: Vec<u8>) -> Vec<u8> {
        v
    }

    async fn hold(&self, tag: u32) -> u32 {
        let mut guard = DropGuard {
            tag,
            tx: self.dropped.clone(),
            armed: true,
        };
        let _ = self.started.send(tag);
        self.gate.acquire().await.unwrap().forget();
        guard.armed = false;
        let _ = self.finished.send(tag);
        tag
    }

    async fn div(&self, a: i32, b: i32) -> Result<i32, DivError> {
        if b == 0 {
            return Err(DivError::ByZero);
        }
        a.checked_div(b).ok_or(DivError::Overflow { a })
    }

    async fn note(&self, v: u64) {
        let _ = self.noted.send(v);
    }

    async fn ask_back(&self, ctx: Context, x: u32) -> Result<u32, String> {
        let client = ctx.client(Cbor::default()).map_err(|e| e.to_string())?;
        HelperClient::new(client)
            .triple(x)
            .await
            .map_err(|e| e.to_string())
    }

    async fn explode(&self) -> u8 {
        panic!("boom")
    }

    async fn whoami(&self, ctx: Context) -> String {
        format!("{:?}", ctx.peer())
    }
}

pub struct HelperImpl;

impl Helper for HelperImpl {
    async fn triple(&self, x: u32) -> u32 {
        x * 3
    }
}

/// A server with `Lab` and `Helper`, and a client connected to it over an in-process link.
pub async fn connect(server: &Server<Cbor>) -> Client<Cbor> {
    connect_with(server, Client::builder(Cbor::default())).await
}

pub async fn connect_with(
    server: &Server<Cbor>,
    builder: courier::ClientBuilder<Cbor>,
) -> Client<Cbor> {
    let (server_end, client_end) = mem::pair();
    let (served, client) = tokio::join!(
        server.serve_link(server_end),
        builder.connect_link(client_end)
    );
    served.unwrap();
    client.unwrap()
}

pub fn lab_server() -> (Server<Cbor>, Probes) {
    let (lab, probes) = lab();
    let server = Server::builder(Cbor::default())
        .service(LabServer::new(lab))
        .service(HelperServer::new(HelperImpl))
        .build();
    (server, probes)
}

pub fn expect_err<T: std::fmt::Debug>(r: Result<T, RpcError>) -> RpcError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

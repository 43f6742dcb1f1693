//! Shared pieces of the example binaries: a small key-value service that `quic_server` serves
//! and `quic_client` calls.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use courier_examples::{KvStore, Kv};
//! let store = KvStore::default();
//! assert_eq!(store.put("a".into(), "1".into()).await, None);
//! assert_eq!(store.get("a".into()).await, Some("1".into()));
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A tiny key-value store, as a Courier service.
#[courier::service]
pub trait Kv {
    /// Stores `value` under `key`, returning the value it replaced.
    async fn put(&self, key: String, value: String) -> Option<String>;
    /// The value under `key`.
    async fn get(&self, key: String) -> Option<String>;
    /// Every key, in order.
    async fn keys(&self) -> Vec<String>;
}

/// The store behind [`Kv`]: a map behind a mutex.
#[derive(Debug, Default)]
pub struct KvStore {
    map: Mutex<BTreeMap<String, String>>,
}

impl KvStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Kv for KvStore {
    async fn put(&self, key: String, value: String) -> Option<String> {
        self.map().insert(key, value)
    }

    async fn get(&self, key: String) -> Option<String> {
        self.map().get(&key).cloned()
    }

    async fn keys(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }
}

/// Ctrl-C (SIGINT): the handler is installed now, so a Ctrl-C that comes before the
/// returned future is first awaited is not lost (nor does it kill the process).
pub fn ctrl_c() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    Ok(async move {
        interrupt.recv().await;
    })
}

/// Serves `listener` until `stop` (say, [`ctrl_c`]), then shuts down gracefully: no new calls
/// (clients get the retryable `Unavailable`), the running ones get `grace` to finish, then the
/// connections close.
pub async fn serve_until(
    server: &courier::Server<impl courier::CodecSet>,
    listener: impl courier::transport::Listener,
    stop: impl std::future::Future<Output = ()>,
    grace: std::time::Duration,
) -> Result<(), courier::TransportError> {
    tokio::select! {
        served = server.serve(listener) => return served,
        () = stop => {}
    }
    println!(
        "stopping: {} calls running, {grace:?} to finish",
        server.running_handlers()
    );
    let report = server.shutdown(grace).await;
    println!(
        "stopped: {} calls were running, {} cancelled",
        report.running, report.cancelled
    );
    Ok(())
}

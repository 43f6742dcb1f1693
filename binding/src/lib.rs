//! Courier binding: a directory of servers on [etcd](https://etcd.io), so that clients find
//! servers by name instead of by address.
//!
//! The traits and the ranking live in the core ([`courier::directory`]); this crate implements
//! them on etcd ([`EtcdDirectory`], feature `etcd`, on by default). A server registers an
//! [`InstanceRecord`](courier::directory::InstanceRecord) under its service name, attached to an
//! etcd lease that a background task keeps alive: when the server stops, its
//! [`Registration`](courier::directory::Registration) revokes the lease, and when it dies, the
//! lease expires and etcd deletes the record. A client resolves the name at each (re)connect
//! and watches it, moving when its instance leaves.
//!
//! Records are JSON under `{prefix}/services/{service}/{instance}` (prefix `/courier` by
//! default); `PROTOCOL.md` ("Directory records") gives the layout, for clients in other
//! languages.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use courier::address::Transports;
//! use courier::directory::{InstanceRecord, Registrar};
//! use courier::{Client, Server};
//! use courier_binding::EtcdDirectory;
//! use courier_cbor::Cbor;
//! # #[courier::service] pub trait Calc { async fn add(&self, a: i32, b: i32) -> i32; }
//! # struct MyCalc; impl Calc for MyCalc { async fn add(&self, a: i32, b: i32) -> i32 { a + b } }
//! # let etcd_server = courier_binding::testing::Etcd::start().await?;
//! # let endpoint = etcd_server.endpoint().to_owned();
//! # let socket = std::env::temp_dir().join(format!("calc-doc-{}.sock", std::process::id()));
//! Transports::install(courier_shm::ShmTransport::default());
//! let etcd = Arc::new(EtcdDirectory::connect([endpoint]).await?);
//!
//! // A server: listen, advertise the addresses under a name, serve.
//! let server = Server::builder(Cbor::default()).service(CalcServer::new(MyCalc)).build();
//! let listeners = server.listen([format!("shm://{}", socket.display())])?;
//! let record = InstanceRecord::new("calc", listeners.addresses()).interfaces(server.interfaces());
//! let _registration = etcd.register(record, Duration::from_secs(10)).await?;
//! tokio::spawn(async move { server.serve_all(listeners).await });
//!
//! // A client: find it by name. On the server's host, that is shared memory.
//! let client = Client::builder(Cbor::default()).connect_named(etcd, "calc").await?;
//! assert_eq!(client.address().map(|a| a.scheme().to_owned()).as_deref(), Some("shm"));
//! assert_eq!(CalcClient::new(client).add(2, 3).await?, 5);
//! # Ok(()) }
//! ```
//!
//! The `testing` feature adds [`testing::Etcd`], a real etcd server started in a temporary
//! directory, as the tests and the `directory` example use.

#![warn(clippy::unwrap_used)]

#[cfg(feature = "etcd")]
mod etcd;
#[cfg(feature = "testing")]
pub mod testing;

#[cfg(feature = "etcd")]
pub use etcd::EtcdDirectory;

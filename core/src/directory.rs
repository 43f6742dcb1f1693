//! Binding by name: a directory of servers, and how a client picks one.
//!
//! A server advertises itself under a service name with a [`Registrar`]: an
//! [`InstanceRecord`] lists its interfaces, its host's identity ([`HostId`]) and every
//! address it listens on, and lives only as long as the server keeps its [`Registration`]
//! (a lease, in a real directory). A client looks the name up with a [`Resolver`] when it
//! connects and again whenever it reconnects, and watches the name so that it moves to
//! another instance when its own leaves the directory.
//!
//! Which address a client dials is decided by [`rank`]: an instance on the client's own host
//! is reached over shared memory when it offers it (`shm://`), any other over the network
//! (`quic://`); shared-memory and in-process addresses of other hosts, and loopback
//! addresses of other hosts, are never tried. [`Prefer`] overrides the order.
//!
//! [`StaticDirectory`] is a directory in memory (tests, a fixed list from a config file);
//! `courier-binding` has one on etcd.
//!
//! ```
//! use std::sync::Arc;
//! use courier::directory::{InstanceRecord, Registrar, StaticDirectory};
//! use courier::{Client, Server};
//! use courier_cbor::Cbor;
//!
//! #[courier::service]
//! pub trait Clock { async fn now(&self) -> u64; }
//! struct Fixed;
//! impl Clock for Fixed { async fn now(&self) -> u64 { 42 } }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let directory = Arc::new(StaticDirectory::new());
//!
//! let server = Server::builder(Cbor::default()).service(ClockServer::new(Fixed)).build();
//! let listeners = server.listen(["mem://clock-1"])?;
//! let record = InstanceRecord::new("clock", listeners.addresses()).interfaces(server.interfaces());
//! let _registration = directory.register(record, std::time::Duration::from_secs(10)).await?;
//! tokio::spawn(async move { server.serve_all(listeners).await });
//!
//! let client = Client::builder(Cbor::default()).connect_named(directory, "clock").await?;
//! assert_eq!(ClockClient::new(client).now().await?, 42);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::address::{Address, Transports};
use crate::error::AddressError;
use crate::ids::InterfaceId;
use crate::sync::lock;

/// The environment variable that sets this process's [`HostId::local`].
pub const HOST_ID_ENV: &str = "COURIER_HOST_ID";

/// Which host a server runs on, as far as shared memory is concerned: two processes with the
/// same host id can reach each other's `shm://` addresses.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HostId(String);

impl HostId {
    /// A host id of your choosing: a container or a network namespace that shares the kernel
    /// but not the file system may be another host to Courier.
    pub fn new(id: impl Into<String>) -> HostId {
        HostId(id.into())
    }

    /// This host's id: `$COURIER_HOST_ID` if set, otherwise the kernel's boot id (the same for
    /// every process of one running kernel), otherwise `/etc/machine-id`, otherwise
    /// `unknown`, which matches no other host (so a client never assumes shared memory).
    pub fn local() -> HostId {
        if let Ok(id) = std::env::var(HOST_ID_ENV) {
            if !id.trim().is_empty() {
                return HostId(id.trim().to_owned());
            }
        }
        for file in ["/proc/sys/kernel/random/boot_id", "/etc/machine-id"] {
            if let Ok(id) = std::fs::read_to_string(file) {
                if !id.trim().is_empty() {
                    return HostId(id.trim().to_owned());
                }
            }
        }
        HostId("unknown".to_owned())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn matches(&self, other: &HostId) -> bool {
        self == other && self.0 != "unknown"
    }
}

impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostId({})", self.0)
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One interface a server offers, as a directory records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceRecord {
    /// The service trait's path (`my_api::Calc`).
    pub name: String,
    /// Its interface id on the wire.
    pub id: u32,
    /// Its version.
    pub version: u16,
}

impl InterfaceRecord {
    /// The record of an interface.
    pub fn new(name: impl Into<String>, id: InterfaceId, version: u16) -> InterfaceRecord {
        InterfaceRecord {
            name: name.into(),
            id: id.get(),
            version,
        }
    }
}

/// What a directory holds about one running server: the value of its entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct InstanceRecord {
    /// The service name it is registered under.
    pub service: String,
    /// This instance's name, unique among the service's instances (random by default).
    pub instance: String,
    /// The host it runs on.
    pub host: HostId,
    /// The interfaces it serves.
    #[serde(default)]
    pub interfaces: Vec<InterfaceRecord>,
    /// Every address it listens on, as its clients dial them.
    pub addresses: Vec<Address>,
}

impl InstanceRecord {
    /// A record for `service` at `addresses`, on this host ([`HostId::local`]), with a random
    /// instance name and no interfaces listed.
    pub fn new(service: impl Into<String>, addresses: impl IntoIterator<Item = Address>) -> Self {
        InstanceRecord {
            service: service.into(),
            instance: format!("{:016x}", crate::identity::random_u64()),
            host: HostId::local(),
            interfaces: Vec::new(),
            addresses: addresses.into_iter().collect(),
        }
    }

    /// Sets the instance name.
    pub fn instance(mut self, name: impl Into<String>) -> Self {
        self.instance = name.into();
        self
    }

    /// Sets the host id.
    pub fn host(mut self, host: HostId) -> Self {
        self.host = host;
        self
    }

    /// Sets the interfaces listed ([`Server::interfaces`](crate::Server::interfaces)).
    pub fn interfaces(mut self, interfaces: Vec<InterfaceRecord>) -> Self {
        self.interfaces = interfaces;
        self
    }

    /// Checks the record before it goes to a directory that other hosts read: it needs a
    /// service name, an instance name and an address; options that name local files (`ca`,
    /// `cert`, `key`), which clients refuse in a record, are refused; in-process (`mem://`)
    /// addresses are refused (no other process can use them), and so are loopback and wildcard addresses
    /// (`127.0.0.1`, `0.0.0.0`, `localhost`) unless `allow_local_only`, for a directory that
    /// only this host reads.
    pub fn check_advertisable(&self, allow_local_only: bool) -> Result<(), AddressError> {
        let refuse = |reason: String| Err(AddressError::Directory(reason));
        if self.service.is_empty() || self.service.contains('/') {
            return refuse(format!(
                "`{}` is not a service name: it must be non-empty, without `/`",
                self.service
            ));
        }
        if self.instance.is_empty() || self.instance.contains('/') {
            return refuse(format!(
                "`{}` is not an instance name: it must be non-empty, without `/`",
                self.instance
            ));
        }
        if self.addresses.is_empty() {
            return refuse(format!("`{}` advertises no address", self.service));
        }
        for a in &self.addresses {
            from_directory(a).map_err(AddressError::Directory)?;
            if a.scheme() == "mem" {
                return refuse(format!(
                    "`{a}` is reachable only inside this process; do not advertise it"
                ));
            }
            if a.is_local_only() && !allow_local_only {
                return refuse(format!(
                    "`{a}` is a loopback or wildcard address, which other hosts cannot reach; \
                     advertise an address of this host that clients can dial \
                     (Address::with_host_port)"
                ));
            }
        }
        Ok(())
    }
}

/// What [`Resolver::watch`] yields: the whole list of a service's live instances, each time it
/// changes.
pub type Updates = BoxStream<'static, Result<Vec<InstanceRecord>, AddressError>>;

/// Looks service names up in a directory.
pub trait Resolver: Send + Sync + 'static {
    /// The live instances of `service`, in the directory's order.
    fn resolve<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InstanceRecord>, AddressError>>;

    /// Follows `service`: the stream yields the whole list of live instances each time it
    /// changes. It ends, or yields an error, when the directory can no longer be followed.
    fn watch<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Updates, AddressError>>;
}

/// Advertises servers in a directory.
pub trait Registrar: Send + Sync + 'static {
    /// Puts `record` in the directory for as long as the returned [`Registration`] lives and
    /// this process keeps it alive: the entry vanishes within `ttl` of the process dying.
    fn register(
        &self,
        record: InstanceRecord,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Registration, AddressError>>;
}

/// What keeps a record in a directory: implemented by each [`Registrar`].
pub trait Lease: Send + Sync + 'static {
    /// Removes the record now (and stops keeping it alive).
    fn withdraw(&self) -> BoxFuture<'static, Result<(), AddressError>>;
}

/// A record kept in a directory. Dropping it withdraws the record (in the background, if a
/// runtime is running; otherwise the directory drops it when its lease expires);
/// [`Registration::withdraw`] does it and waits.
pub struct Registration {
    record: InstanceRecord,
    lease: Option<Box<dyn Lease>>,
}

impl Registration {
    /// A registration of `record`, kept by `lease`.
    pub fn new(record: InstanceRecord, lease: impl Lease) -> Registration {
        Registration {
            record,
            lease: Some(Box::new(lease)),
        }
    }

    /// The record registered.
    pub fn record(&self) -> &InstanceRecord {
        &self.record
    }

    /// Removes the record from the directory and waits until it is gone.
    pub async fn withdraw(mut self) -> Result<(), AddressError> {
        match self.lease.take() {
            Some(lease) => lease.withdraw().await,
            None => Ok(()),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let withdraw = lease.withdraw();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(withdraw);
            }
        }
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// Which of an instance's addresses a client dials first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Prefer {
    /// Instances on this host first, over shared memory (`shm`, then `mem`) when they offer
    /// it; then other hosts over the network, QUIC before TLS over TCP (`tcp` is the fallback
    /// where UDP is blocked: see [`ClientBuilder::fallback_delay`](crate::ClientBuilder::fallback_delay)).
    /// The default.
    #[default]
    SameHost,
    /// Only these schemes, in this order (`["quic"]` to never use shared memory).
    Schemes(Vec<String>),
}

/// The addresses worth dialing for `instances`, best first, with the instance each belongs
/// to: see [`Prefer`]. Addresses no transport in `transports` serves are left out, and so are
/// the shared-memory, in-process and loopback addresses of instances on other hosts.
pub fn rank(
    instances: &[InstanceRecord],
    host: &HostId,
    prefer: &Prefer,
    transports: &Transports,
) -> Vec<(String, Address)> {
    let mut ranked: Vec<(usize, usize, String, Address)> = Vec::new();
    for (order, record) in instances.iter().enumerate() {
        let same_host = record.host.matches(host);
        for address in &record.addresses {
            if !transports.serves(address.scheme()) {
                continue;
            }
            let host_local = matches!(address.scheme(), "shm" | "mem") || address.is_local_only();
            if host_local && !same_host {
                continue;
            }
            let rank = match prefer {
                Prefer::SameHost => {
                    let scheme = match address.scheme() {
                        "shm" => 0,
                        "mem" => 1,
                        "tcp" => 3,
                        _ => 2,
                    };
                    usize::from(!same_host) * 4 + scheme
                }
                Prefer::Schemes(order) => match order.iter().position(|s| s == address.scheme()) {
                    Some(i) => i,
                    None => continue,
                },
            };
            ranked.push((rank, order, record.instance.clone(), address.clone()));
        }
    }
    // Stable: within a rank, the directory's order of instances and of each one's addresses.
    ranked.sort_by_key(|(rank, order, ..)| (*rank, *order));
    ranked.into_iter().map(|(_, _, i, a)| (i, a)).collect()
}

/// Options a directory record may not set on an address: they name files on the client's
/// machine (the roots it trusts, an identity), which are the client's to choose, not the
/// directory's.
const LOCAL_OPTIONS: [&str; 3] = ["ca", "cert", "key"];

/// Refuses an address from a directory that sets a [`LOCAL_OPTIONS`] option.
pub(crate) fn from_directory(address: &Address) -> Result<(), String> {
    match address.params().find(|(k, _)| LOCAL_OPTIONS.contains(k)) {
        Some((k, _)) => Err(format!(
            "a directory record may not set `{k}`, which names a file on this machine; \
             configure it on the client's transport (e.g. QuicTransport::client_tls)"
        )),
        None => Ok(()),
    }
}

/// A directory held in memory: a fixed list (from a config file, say) or the registrations of
/// servers in this process. Cheap to clone: clones share the entries. Watchers see every
/// change.
#[derive(Debug, Clone, Default)]
pub struct StaticDirectory {
    shared: Arc<StaticShared>,
}

#[derive(Debug)]
struct StaticShared {
    entries: Mutex<BTreeMap<(String, String), InstanceRecord>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Default for StaticShared {
    fn default() -> Self {
        StaticShared {
            entries: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::watch::channel(0).0,
        }
    }
}

impl StaticShared {
    fn list(&self, service: &str) -> Vec<InstanceRecord> {
        lock(&self.entries)
            .values()
            .filter(|r| r.service == service)
            .cloned()
            .collect()
    }
}

impl StaticDirectory {
    /// An empty directory.
    pub fn new() -> StaticDirectory {
        StaticDirectory::default()
    }

    /// Adds (or replaces) `record` for good.
    pub fn insert(&self, record: InstanceRecord) {
        let key = (record.service.clone(), record.instance.clone());
        lock(&self.shared.entries).insert(key, record);
        self.shared.changed.send_modify(|v| *v += 1);
    }

    /// Removes the instance `instance` of `service`; whether it was there.
    pub fn remove(&self, service: &str, instance: &str) -> bool {
        let removed = lock(&self.shared.entries)
            .remove(&(service.to_owned(), instance.to_owned()))
            .is_some();
        self.shared.changed.send_modify(|v| *v += 1);
        removed
    }
}

impl Resolver for StaticDirectory {
    fn resolve<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InstanceRecord>, AddressError>> {
        Box::pin(async move { Ok(self.shared.list(service)) })
    }

    fn watch<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Updates, AddressError>> {
        let mut changes = self.shared.changed.subscribe();
        // The first item is the list as it is now.
        changes.mark_changed();
        let state = (changes, Arc::clone(&self.shared), service.to_owned());
        let stream = futures::stream::unfold(state, |(mut changes, shared, service)| async move {
            changes.changed().await.ok()?;
            let list = shared.list(&service);
            Some((Ok(list), (changes, shared, service)))
        });
        Box::pin(async move { Ok(stream.boxed()) })
    }
}

/// A [`StaticDirectory`] entry, removed when dropped.
struct StaticLease {
    shared: Weak<StaticShared>,
    key: (String, String),
}

impl Lease for StaticLease {
    fn withdraw(&self) -> BoxFuture<'static, Result<(), AddressError>> {
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.entries).remove(&self.key);
            shared.changed.send_modify(|v| *v += 1);
        }
        Box::pin(async { Ok(()) })
    }
}

impl Registrar for StaticDirectory {
    /// Adds `record` until the registration is dropped; the `ttl` means nothing in memory.
    fn register(
        &self,
        record: InstanceRecord,
        _ttl: Duration,
    ) -> BoxFuture<'_, Result<Registration, AddressError>> {
        let key = (record.service.clone(), record.instance.clone());
        self.insert(record.clone());
        let lease = StaticLease {
            shared: Arc::downgrade(&self.shared),
            key,
        };
        Box::pin(async move { Ok(Registration::new(record, lease)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(instance: &str, host: &str, addresses: &[&str]) -> InstanceRecord {
        InstanceRecord::new("svc", addresses.iter().map(|a| a.parse().expect("address")))
            .instance(instance)
            .host(HostId::new(host))
    }

    fn all() -> Transports {
        struct Named(&'static str);
        impl crate::address::Transport for Named {
            fn scheme(&self) -> &'static str {
                self.0
            }
            fn connector(
                &self,
                a: &Address,
            ) -> Result<Arc<dyn crate::transport::DynConnector>, AddressError> {
                Err(a.unusable("not dialed in this test"))
            }
            fn listen(&self, a: &Address) -> Result<crate::address::Bound, AddressError> {
                Err(a.unusable("not bound in this test"))
            }
        }
        Transports::new().with(Named("quic")).with(Named("shm"))
    }

    fn ranked(instances: &[InstanceRecord], host: &str, prefer: &Prefer) -> Vec<String> {
        rank(instances, &HostId::new(host), prefer, &all())
            .into_iter()
            .map(|(i, a)| format!("{i} {a}"))
            .collect()
    }

    #[test]
    fn same_host_prefers_shared_memory_and_other_hosts_get_the_network() {
        let instances = [
            record("far", "h2", &["quic://10.0.0.2:1", "shm:///far.sock"]),
            record("near", "h1", &["quic://10.0.0.1:1", "shm:///near.sock"]),
        ];
        assert_eq!(
            ranked(&instances, "h1", &Prefer::SameHost),
            [
                "near shm:///near.sock",
                "near quic://10.0.0.1:1",
                "far quic://10.0.0.2:1"
            ]
        );
        // From a third host, no shared memory at all.
        assert_eq!(
            ranked(&instances, "h3", &Prefer::SameHost),
            ["far quic://10.0.0.2:1", "near quic://10.0.0.1:1"]
        );
        // Overridden: the network only.
        assert_eq!(
            ranked(&instances, "h1", &Prefer::Schemes(vec!["quic".into()])),
            ["far quic://10.0.0.2:1", "near quic://10.0.0.1:1"]
        );
    }

    #[test]
    fn loopback_unknown_hosts_and_unserved_schemes_are_passed_over() {
        let instances = [
            record("a", "h2", &["quic://127.0.0.1:1", "tcp://10.0.0.9:1"]),
            record("b", "unknown", &["shm:///b.sock", "quic://10.0.0.3:1"]),
        ];
        assert_eq!(
            ranked(&instances, "h1", &Prefer::SameHost),
            ["b quic://10.0.0.3:1"]
        );
        // An unknown host id matches nobody, not even another unknown.
        assert_eq!(
            ranked(&instances, "unknown", &Prefer::SameHost),
            ["b quic://10.0.0.3:1"]
        );
    }

    #[test]
    fn a_record_cannot_choose_the_files_a_client_trusts() {
        let ok: Address = "quic://10.0.0.1:1?server_name=a.example"
            .parse()
            .expect("address");
        assert_eq!(from_directory(&ok), Ok(()));
        for bad in [
            "quic://10.0.0.1:1?ca=/tmp/evil.pem",
            "quic://10.0.0.1:1?cert=/c.pem&key=/k.pem",
        ] {
            let address: Address = bad.parse().expect("address");
            let e = from_directory(&address).expect_err(bad);
            assert!(e.contains("client's transport"), "{e}");
        }
    }

    #[test]
    fn advertising_refuses_what_other_hosts_cannot_reach() {
        let ok = record("a", "h", &["quic://10.0.0.1:1", "shm:///a.sock"]);
        assert_eq!(ok.check_advertisable(false), Ok(()));
        for bad in [
            "quic://127.0.0.1:1",
            "quic://0.0.0.0:1",
            "quic://localhost:1",
        ] {
            let r = record("a", "h", &[bad]);
            assert!(r.check_advertisable(false).is_err(), "{bad}");
            assert_eq!(r.check_advertisable(true), Ok(()), "{bad}");
        }
        assert!(record("a", "h", &["mem://x"])
            .check_advertisable(true)
            .is_err());
        assert!(record("a", "h", &[]).check_advertisable(true).is_err());
        assert!(record("a/b", "h", &["shm:///a"])
            .check_advertisable(true)
            .is_err());
    }

    #[tokio::test]
    async fn a_static_directory_registers_watches_and_withdraws() {
        tokio::time::timeout(Duration::from_secs(10), async {
            let directory = StaticDirectory::new();
            let mut updates = directory.watch("svc").await.expect("watch");
            assert_eq!(updates.next().await, Some(Ok(vec![])));
            let registration = directory
                .register(record("a", "h", &["shm:///a"]), Duration::from_secs(1))
                .await
                .expect("register");
            let listed = updates.next().await.expect("update").expect("list");
            assert_eq!(listed, vec![registration.record().clone()]);
            registration.withdraw().await.expect("withdraw");
            assert_eq!(updates.next().await, Some(Ok(vec![])));
            assert!(directory.resolve("svc").await.expect("resolve").is_empty());
        })
        .await
        .expect("in time");
    }
}

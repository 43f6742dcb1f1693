//! The directory on etcd: records under leases, lookups, and watches.

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use courier::directory::{InstanceRecord, Lease, Registrar, Registration, Resolver, Updates};
use courier::AddressError;
use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions, WatchOptions, WatchStream};
use futures::future::BoxFuture;
use futures::StreamExt;

/// How long one request to etcd may take before the directory reports it failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The most instances of one service a lookup reads: a bound on what a crowded (or hostile)
/// directory can make a client hold.
const MAX_INSTANCES: i64 = 4096;

/// The largest record read back: etcd's own default request limit is 1.5 MiB, and a record
/// is a few hundred bytes.
const MAX_RECORD_BYTES: usize = 64 * 1024;

fn etcd_error(doing: &str, e: impl fmt::Display) -> AddressError {
    AddressError::Directory(format!("etcd: {doing}: {e}"))
}

/// Runs one etcd request within [`REQUEST_TIMEOUT`].
async fn request<T>(
    doing: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, AddressError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(etcd_error(doing, e)),
        Err(_) => Err(etcd_error(doing, "no answer within 5 s")),
    }
}

/// A [`Resolver`] and [`Registrar`] on etcd (v3 API).
///
/// Each instance is one key, `{prefix}/services/{service}/{instance}`, whose value is the
/// [`InstanceRecord`] as JSON, attached to a lease of the registration's TTL that a
/// background task renews every third of it. If the lease is lost anyway (etcd unreachable for
/// longer than the TTL), the task registers the record again under a new lease as soon as etcd
/// answers.
///
/// A lookup reads at most 4,096 instances of a service.
///
/// By default, records with loopback or wildcard addresses are refused
/// ([`InstanceRecord::check_advertisable`]); [`EtcdDirectory::allow_local_only`] accepts them
/// for a directory that only one host reads.
#[derive(Clone)]
pub struct EtcdDirectory {
    client: Client,
    prefix: String,
    allow_local_only: bool,
}

impl fmt::Debug for EtcdDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdDirectory")
            .field("prefix", &self.prefix)
            .field("allow_local_only", &self.allow_local_only)
            .finish_non_exhaustive()
    }
}

impl EtcdDirectory {
    /// Connects to the etcd cluster at `endpoints` (`http://host:2379`, …), giving up after
    /// 5 s.
    pub async fn connect<E: AsRef<str>>(
        endpoints: impl IntoIterator<Item = E>,
    ) -> Result<EtcdDirectory, AddressError> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.as_ref().to_owned())
            .collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), REQUEST_TIMEOUT);
        let client = request(
            &format!("connecting to {}", endpoints.join(", ")),
            Client::connect(&endpoints, Some(options)),
        )
        .await?;
        Ok(EtcdDirectory::from_client(client))
    }

    /// A directory over an etcd client you configured (TLS, authentication, …).
    pub fn from_client(client: Client) -> EtcdDirectory {
        EtcdDirectory {
            client,
            prefix: "/courier".to_owned(),
            allow_local_only: false,
        }
    }

    /// The key prefix of every record. Default: `/courier`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().trim_end_matches('/').to_owned();
        self
    }

    /// Whether to accept records with loopback and wildcard addresses, which only the host
    /// itself can reach: for a directory that one host reads (development, tests). Default:
    /// `false`.
    pub fn allow_local_only(mut self, allow: bool) -> Self {
        self.allow_local_only = allow;
        self
    }

    fn service_prefix(&self, service: &str) -> Result<String, AddressError> {
        if service.is_empty() || service.contains('/') {
            return Err(AddressError::Directory(format!(
                "`{service}` is not a service name: it must be non-empty, without `/`"
            )));
        }
        Ok(format!("{}/services/{service}/", self.prefix))
    }
}

/// The live instances of `service` under `prefix`; records that do not parse, or that name
/// another service, are logged and passed over.
async fn list(
    mut client: Client,
    prefix: &str,
    service: &str,
) -> Result<Vec<InstanceRecord>, AddressError> {
    let response = request(
        "listing instances",
        client.get(
            prefix,
            Some(GetOptions::new().with_prefix().with_limit(MAX_INSTANCES)),
        ),
    )
    .await?;
    if response.more() {
        tracing::warn!(%prefix, limit = MAX_INSTANCES, "more instances than a lookup reads; the rest are passed over");
    }
    let mut records = Vec::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        if kv.value().len() > MAX_RECORD_BYTES {
            tracing::warn!(%key, bytes = kv.value().len(), "directory record too large; skipped");
            continue;
        }
        match serde_json::from_slice::<InstanceRecord>(kv.value()) {
            Ok(record) if record.service == service => records.push(record),
            Ok(record) => {
                tracing::warn!(%key, service = %record.service, "record of another service under this name; skipped")
            }
            Err(e) => tracing::warn!(%key, error = %e, "directory record does not parse; skipped"),
        }
    }
    Ok(records)
}

impl Resolver for EtcdDirectory {
    fn resolve<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<InstanceRecord>, AddressError>> {
        Box::pin(async move {
            let prefix = self.service_prefix(service)?;
            list(self.client.clone(), &prefix, service).await
        })
    }

    fn watch<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<Updates, AddressError>> {
        Box::pin(async move {
            let prefix = self.service_prefix(service)?;
            let mut client = self.client.clone();
            // Watch first, then list: a change between the two is seen twice, never missed.
            let events = request(
                "watching",
                client.watch(prefix.as_str(), Some(WatchOptions::new().with_prefix())),
            )
            .await?;
            let first = list(client.clone(), &prefix, service).await?;
            let state = Watching {
                client,
                events: Some(events),
                prefix,
                service: service.to_owned(),
                first: Some(first),
            };
            Ok(futures::stream::unfold(state, Watching::next).boxed())
        })
    }
}

/// The state of one watch: the stream of etcd's events, and what a change is re-read from.
struct Watching {
    client: Client,
    /// `None` once the watch has failed: the stream ends after reporting it.
    events: Option<WatchStream>,
    prefix: String,
    service: String,
    first: Option<Vec<InstanceRecord>>,
}

impl Watching {
    async fn next(mut self) -> Option<(Result<Vec<InstanceRecord>, AddressError>, Watching)> {
        if let Some(first) = self.first.take() {
            return Some((Ok(first), self));
        }
        let events = self.events.as_mut()?;
        let item = match events.message().await {
            Ok(Some(response)) if response.canceled() => {
                Err(etcd_error("watching", "etcd cancelled the watch"))
            }
            Ok(Some(_)) => {
                let listed = list(self.client.clone(), &self.prefix, &self.service).await;
                return Some((listed, self));
            }
            Ok(None) => return None,
            Err(e) => Err(etcd_error("watching", e)),
        };
        self.events = None;
        Some((item, self))
    }
}

impl Registrar for EtcdDirectory {
    fn register(
        &self,
        record: InstanceRecord,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Registration, AddressError>> {
        Box::pin(async move {
            record.check_advertisable(self.allow_local_only)?;
            let key = format!(
                "{}{}",
                self.service_prefix(&record.service)?,
                record.instance
            );
            let value = serde_json::to_vec(&record)
                .map_err(|e| AddressError::Directory(format!("cannot encode the record: {e}")))?;
            // etcd counts leases in whole seconds, and refuses very short ones.
            let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
            let entry = Entry {
                client: self.client.clone(),
                key,
                value,
                ttl_secs,
            };
            let lease = entry.put().await?;
            let lease_id = Arc::new(AtomicI64::new(lease));
            let keeper = tokio::spawn(entry.clone().keep(Arc::clone(&lease_id))).abort_handle();
            tracing::info!(key = %entry.key, lease, ttl_secs, "registered in etcd");
            Ok(Registration::new(
                record,
                EtcdLease {
                    entry,
                    lease_id,
                    keeper,
                },
            ))
        })
    }
}

/// One record and what it takes to (re)write it.
#[derive(Clone)]
struct Entry {
    client: Client,
    key: String,
    value: Vec<u8>,
    ttl_secs: i64,
}

impl Entry {
    /// Grants a lease and writes the record under it; returns the lease.
    async fn put(&self) -> Result<i64, AddressError> {
        let mut client = self.client.clone();
        let lease = request("granting a lease", client.lease_grant(self.ttl_secs, None))
            .await?
            .id();
        request(
            "writing the record",
            client.put(
                self.key.as_str(),
                self.value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        Ok(lease)
    }

    /// Renews the lease every third of its TTL, for ever; when the lease is lost, writes the
    /// record again under a new one (retrying every second while etcd does not answer).
    async fn keep(self, lease_id: Arc<AtomicI64>) {
        let period = Duration::from_secs(u64::try_from(self.ttl_secs).unwrap_or(2)) / 3;
        loop {
            let lease = lease_id.load(Ordering::Acquire);
            if let Err(e) = self.renew(lease, period).await {
                tracing::warn!(key = %self.key, error = %e, "lease lost; registering again");
            }
            loop {
                match self.put().await {
                    Ok(lease) => {
                        lease_id.store(lease, Ordering::Release);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(key = %self.key, error = %e, "cannot register again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    /// Keeps `lease` alive until that fails; returns why.
    async fn renew(&self, lease: i64, period: Duration) -> Result<(), AddressError> {
        let mut client = self.client.clone();
        let (mut keeper, mut answers) =
            request("keeping the lease alive", client.lease_keep_alive(lease)).await?;
        loop {
            request("keeping the lease alive", keeper.keep_alive()).await?;
            match request("keeping the lease alive", answers.message()).await? {
                Some(answer) if answer.ttl() > 0 => {}
                Some(_) => return Err(etcd_error("keeping the lease alive", "the lease expired")),
                None => {
                    return Err(etcd_error(
                        "keeping the lease alive",
                        "etcd ended the stream",
                    ))
                }
            }
            tokio::time::sleep(period).await;
        }
    }
}

/// A registration's lease: withdrawing stops renewing it and revokes it, which deletes the
/// record.
struct EtcdLease {
    entry: Entry,
    lease_id: Arc<AtomicI64>,
    keeper: tokio::task::AbortHandle,
}

impl Lease for EtcdLease {
    fn withdraw(&self) -> BoxFuture<'static, Result<(), AddressError>> {
        // At once, even without a runtime to revoke with: the lease then expires by itself.
        self.keeper.abort();
        let lease = self.lease_id.load(Ordering::Acquire);
        let mut client = self.entry.client.clone();
        let key = self.entry.key.clone();
        Box::pin(async move {
            request("revoking the lease", client.lease_revoke(lease)).await?;
            tracing::info!(%key, lease, "withdrawn from etcd");
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record in PROTOCOL.md §12.2 is what this crate writes and reads, byte for byte.
    #[test]
    fn the_documented_record_is_the_one_written() {
        let protocol = include_str!("../../PROTOCOL.md");
        let section = &protocol[protocol.find("### 12.2").expect("§12.2")..];
        let start = section.find("```json\n").expect("a JSON example") + "```json\n".len();
        let json = section[start..].lines().next().expect("one line");
        let record: InstanceRecord = serde_json::from_str(json).expect("the example parses");
        assert_eq!(record.service, "greeter");
        assert_eq!(
            record.interfaces[0].id,
            courier::ids::stable_id("directory::Greeter")
        );
        assert_eq!(record.addresses.len(), 2);
        assert_eq!(record.check_advertisable(false), Ok(()));
        let written = serde_json::to_string(&record).expect("encodes");
        assert_eq!(written, json);
    }
}

//! Binding by name: how a client finds its server in a directory each time it connects, and
//! follows it when its instance leaves.

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::StreamExt;

use crate::address::{Address, Transports};
use crate::directory::{from_directory, rank, HostId, InstanceRecord, Prefer, Resolver};
use crate::engine::session::{ClientSession, Whereabouts};
use crate::error::{AddressError, TransportError};
use crate::transport::{Connector, Link};

/// Dials one fixed address, noting it as the client's whereabouts.
pub(crate) struct AddressConnector {
    pub(crate) inner: Arc<dyn crate::transport::DynConnector>,
    pub(crate) address: Address,
    pub(crate) whereabouts: Arc<Whereabouts>,
}

impl Connector for AddressConnector {
    async fn connect(&self) -> Result<Link, TransportError> {
        let link = self.inner.connect_boxed().await?;
        self.whereabouts.set(None, self.address.clone());
        Ok(link)
    }
}

/// How a client binds a service name to a link, each time it connects.
pub(crate) struct Binder {
    pub(crate) resolver: Arc<dyn Resolver>,
    pub(crate) service: String,
    pub(crate) host: HostId,
    pub(crate) prefer: Prefer,
    pub(crate) transports: Transports,
    pub(crate) whereabouts: Arc<Whereabouts>,
    /// How long one address may take to answer before the next is tried: a dead server's
    /// QUIC address otherwise costs a whole idle timeout.
    pub(crate) dial_timeout: Duration,
    /// How long one address of an instance goes alone before its next address is dialed
    /// beside it (see [`ClientBuilder::fallback_delay`](crate::ClientBuilder::fallback_delay)).
    pub(crate) fallback_delay: Duration,
}

impl Binder {
    /// Looks the service up and dials its addresses best first, the current instance's
    /// before the others' (so that a reconnect keeps the session's server when it can).
    pub(crate) async fn bind(&self) -> Result<Link, AddressError> {
        let instances = self.resolver.resolve(&self.service).await?;
        let mut ranked = rank(&instances, &self.host, &self.prefer, &self.transports);
        if let Some(current) = self.whereabouts.instance() {
            // Stable: keeps the rank order within each group.
            ranked.sort_by_key(|(instance, _)| *instance != current);
        }
        let no_instance = |detail: String| AddressError::NoInstance {
            service: self.service.clone(),
            detail,
        };
        if ranked.is_empty() {
            return Err(no_instance(if instances.is_empty() {
                "the directory lists none".to_owned()
            } else {
                format!(
                    "{} listed, none with an address this client can use (transports: {:?}, \
                     host {})",
                    instances.len(),
                    self.transports,
                    self.host
                )
            }));
        }
        let mut failures = Vec::new();
        // One instance at a time, in rank order; an instance's own addresses race.
        let mut rest = ranked.as_slice();
        while let Some((instance, _)) = rest.first() {
            let same = rest.iter().take_while(|(i, _)| i == instance).count();
            let (candidates, next) = rest.split_at(same);
            rest = next;
            match self.race(candidates, &mut failures).await {
                Some((address, link)) => {
                    tracing::info!(
                        service = %self.service, %instance, %address,
                        "bound to an instance"
                    );
                    self.whereabouts
                        .set(Some(instance.clone()), address.clone());
                    return Ok(link);
                }
                None => continue,
            }
        }
        Err(no_instance(failures.join("; ")))
    }
}

impl Binder {
    /// Dials `candidates` (one instance's addresses, best first): each starts when the one
    /// before it has failed or has gone [`Binder::fallback_delay`] without connecting; the
    /// first link wins and the dials still running are dropped. Failures are noted in
    /// `failures`; `None` if every address failed.
    async fn race<'a>(
        &self,
        candidates: &'a [(String, Address)],
        failures: &mut Vec<String>,
    ) -> Option<(&'a Address, Link)> {
        let mut waiting = candidates.iter().map(|(_, address)| address);
        let mut dialing = futures::stream::FuturesUnordered::new();
        loop {
            if dialing.is_empty() {
                let address = waiting.next()?;
                dialing.push(self.dial(address));
            }
            let fallback = tokio::time::sleep(self.fallback_delay);
            tokio::select! {
                Some((address, dialed)) = dialing.next() => match dialed {
                    Ok(link) => return Some((address, link)),
                    Err(e) => {
                        failures.push(format!("{address}: {e}"));
                        // A failure starts the next address at once, not after the delay.
                        if let Some(address) = waiting.next() {
                            dialing.push(self.dial(address));
                        }
                    }
                },
                () = fallback, if waiting.len() > 0 => {
                    if let Some(address) = waiting.next() {
                        dialing.push(self.dial(address));
                    }
                }
            }
        }
    }

    /// Dials one address within the dial timeout.
    async fn dial<'a>(&self, address: &'a Address) -> (&'a Address, Result<Link, String>) {
        if let Err(e) = from_directory(address) {
            return (address, Err(e));
        }
        let dialed = match self.transports.connector(address) {
            Ok(connector) => {
                match tokio::time::timeout(self.dial_timeout, connector.connect_boxed()).await {
                    Ok(dialed) => dialed.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {:?}", self.dial_timeout)),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        (address, dialed)
    }
}

impl Connector for Arc<Binder> {
    async fn connect(&self) -> Result<Link, TransportError> {
        self.bind()
            .await
            .map_err(|e| TransportError::Other(e.to_string()))
    }
}

/// Follows the service in the directory and tells the session to move when its instance
/// leaves while another is listed. A watch that fails is started again (after 1 s, doubling to
/// 30 s while it keeps failing). Ends with the session (the client aborts it when dropped).
pub(crate) async fn follow(binder: Arc<Binder>, session: Weak<ClientSession>) {
    let mut pause = Duration::from_secs(1);
    loop {
        match binder.resolver.watch(&binder.service).await {
            Ok(mut updates) => {
                while let Some(update) = updates.next().await {
                    let Some(session) = session.upgrade() else {
                        return;
                    };
                    match update {
                        Ok(instances) => {
                            pause = Duration::from_secs(1);
                            binder.consider(&instances, &session);
                        }
                        Err(e) => {
                            tracing::warn!(service = %binder.service, error = %e, "directory watch failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(service = %binder.service, error = %e, "cannot watch the directory");
            }
        }
        if session.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

impl Binder {
    /// Moves `session` if its instance is not among `instances` and another usable one is.
    fn consider(&self, instances: &[InstanceRecord], session: &ClientSession) {
        let Some(current) = self.whereabouts.instance() else {
            return;
        };
        let listed = instances.iter().any(|r| r.instance == current);
        let usable = !rank(instances, &self.host, &self.prefer, &self.transports).is_empty();
        if !listed && usable {
            session.rebind(format!(
                "instance {current} of `{}` left the directory",
                self.service
            ));
        }
    }
}

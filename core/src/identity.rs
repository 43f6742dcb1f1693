//! [`Identity`]: who a client is across connections and restarts.
//!
//! A client sends its id and epoch in every handshake. The id names the client; the epoch
//! changes when the client process starts again, so that a server can tell a restarted client
//! (a newer epoch for a known id: the seed's "reincarnation") from one that only reconnected.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::Path;

/// A client's id and epoch.
///
/// By default a client process makes one at start ([`Identity::random`]): a random id, and its
/// start time as the epoch. [`Identity::load_or_create`] keeps the id in a file and counts the
/// epoch up on each start, for clients that want servers to recognize them across restarts.
///
/// ```
/// let dir = std::env::temp_dir().join(format!("courier-identity-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let first = courier::Identity::load_or_create(dir.join("client.id"))?;
/// let next = courier::Identity::load_or_create(dir.join("client.id"))?;
/// assert_eq!(next.client_id(), first.client_id());
/// assert_eq!(next.epoch(), first.epoch() + 1);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    client_id: u128,
    epoch: u64,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({:032x}, epoch {})", self.client_id, self.epoch)
    }
}

/// The first line of an identity file; the format may grow, and this says which it is.
const MAGIC: &str = "courier-identity 1";

pub(crate) fn random_u64() -> u64 {
    // RandomState is seeded from the operating system's randomness.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A random u128 from the operating system's randomness.
pub(crate) fn random_u128() -> u128 {
    (u128::from(random_u64()) << 64) | u128::from(random_u64())
}

impl Identity {
    /// An identity with the given id and epoch.
    pub const fn new(client_id: u128, epoch: u64) -> Self {
        Identity { client_id, epoch }
    }

    /// A random id, and the current time (µs since 1970) as the epoch: a new identity for each
    /// process, which is what a client gets unless it says otherwise.
    pub fn random() -> Self {
        let client_id = random_u128();
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Identity { client_id, epoch }
    }

    /// The identity kept in the file at `path`, with its epoch counted up by one and written
    /// back; a new random identity (epoch 1) if the file does not exist yet. Call it once per
    /// process start. The file is replaced atomically (written beside it, then renamed), so a
    /// crash leaves the old identity or the new one, never half of one.
    ///
    /// A file that is not an identity file is an error (`InvalidData`), not overwritten.
    pub fn load_or_create(path: impl AsRef<Path>) -> io::Result<Identity> {
        let path = path.as_ref();
        let identity = match std::fs::read_to_string(path) {
            Ok(text) => {
                let old = Self::parse(&text).ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is not a Courier identity file", path.display()),
                    )
                })?;
                let epoch = old.epoch.checked_add(1).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "the epoch is exhausted")
                })?;
                Identity { epoch, ..old }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Identity {
                epoch: 1,
                ..Self::random()
            },
            Err(e) => return Err(e),
        };
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".new");
        std::fs::write(&temporary, identity.to_text())?;
        std::fs::rename(&temporary, path)?;
        Ok(identity)
    }

    /// The client's id.
    pub const fn client_id(&self) -> u128 {
        self.client_id
    }

    /// The epoch.
    pub const fn epoch(&self) -> u64 {
        self.epoch
    }

    fn to_text(self) -> String {
        format!("{MAGIC}\n{:032x}\n{}\n", self.client_id, self.epoch)
    }

    fn parse(text: &str) -> Option<Identity> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let client_id = u128::from_str_radix(lines.next()?.trim(), 16).ok()?;
        let epoch = lines.next()?.trim().parse().ok()?;
        Some(Identity { client_id, epoch })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_keeps_the_id_and_counts_the_epoch() {
        let dir = std::env::temp_dir().join(format!("courier-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("id");
        let _ = std::fs::remove_file(&path);
        let first = Identity::load_or_create(&path).unwrap();
        assert_eq!(first.epoch(), 1);
        let second = Identity::load_or_create(&path).unwrap();
        assert_eq!((second.client_id(), second.epoch()), (first.client_id(), 2));
        assert_ne!(Identity::random().client_id(), first.client_id());
        std::fs::write(&path, "something else\n").unwrap();
        let err = Identity::load_or_create(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "something else\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

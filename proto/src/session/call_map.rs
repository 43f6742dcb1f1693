//! A session's calls by id, each id hashed once.
//!
//! The ids are the client's: a peer chooses them, so they are hashed with a keyed hash (std's
//! SipHash under a random key per session), which no peer can aim collisions at. That hash
//! costs more than the rest of a lookup, and a served call is looked up three or four times
//! (when it begins, when it finishes, when its client releases it, when the outcome queue is
//! compacted). So each id is hashed once, when it arrives, and its [`Key`] (the id with its
//! hash) is kept wherever the session remembers the id: the later lookups reuse the hash.

use std::hash::{BuildHasher, RandomState};

use hashbrown::hash_table::{self, HashTable};

/// A call id and its hash under its session's key. Ordered by id (then hash, which for one
/// session follows from the id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    pub(crate) id: u64,
    hash: u64,
}

/// Values by call id, with a key of their own.
#[derive(Debug)]
pub(crate) struct CallMap<V> {
    table: HashTable<(Key, V)>,
    keys: RandomState,
}

impl<V> CallMap<V> {
    pub(crate) fn new() -> Self {
        CallMap {
            table: HashTable::new(),
            keys: RandomState::new(),
        }
    }

    /// The key of `id` in this map: the one place where an id is hashed.
    pub(crate) fn key(&self, id: u64) -> Key {
        Key {
            id,
            hash: self.keys.hash_one(id),
        }
    }

    pub(crate) fn get(&self, key: Key) -> Option<&V> {
        self.table
            .find(key.hash, |(k, _)| k.id == key.id)
            .map(|(_, v)| v)
    }

    pub(crate) fn contains(&self, key: Key) -> bool {
        self.get(key).is_some()
    }

    /// The place of `key`: its value, or room for one.
    pub(crate) fn entry(&mut self, key: Key) -> hash_table::Entry<'_, (Key, V)> {
        self.table
            .entry(key.hash, |(k, _)| k.id == key.id, |(k, _)| k.hash)
    }

    pub(crate) fn remove(&mut self, key: Key) -> Option<V> {
        let found = self.table.find_entry(key.hash, |(k, _)| k.id == key.id);
        found.ok().map(|e| e.remove().0 .1)
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (Key, &V)> {
        self.table.iter().map(|(k, v)| (*k, v))
    }

    pub(crate) fn into_values(self) -> impl Iterator<Item = V> {
        self.table.into_iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_finds_what_it_put_and_nothing_else() {
        let mut map = CallMap::new();
        for id in [0, 1, 7, u64::MAX] {
            let key = map.key(id);
            match map.entry(key) {
                hash_table::Entry::Vacant(v) => {
                    v.insert((key, id.wrapping_mul(2)));
                }
                hash_table::Entry::Occupied(_) => panic!("{id} was there already"),
            }
        }
        assert_eq!(map.len(), 4);
        // Keys made again hash the same: the hash depends on the map's key and the id only.
        assert_eq!(map.key(7), map.key(7));
        assert_eq!(map.get(map.key(7)), Some(&14));
        assert!(!map.contains(map.key(8)));
        assert_eq!(map.remove(map.key(1)), Some(2));
        assert_eq!(map.remove(map.key(1)), None);
        let mut ids: Vec<u64> = map.iter().map(|(k, _)| k.id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [0, 7, u64::MAX]);
        let mut values: Vec<u64> = map.into_values().collect();
        values.sort_unstable();
        assert_eq!(values, [0, 14, u64::MAX.wrapping_mul(2)]);
    }

    #[test]
    fn two_maps_hash_under_different_keys() {
        // A peer that learns how one session hashes learns nothing of another's.
        let (a, b) = (CallMap::<()>::new(), CallMap::<()>::new());
        let differ = (0..64).any(|id| a.key(id).hash != b.key(id).hash);
        assert!(differ);
    }
}

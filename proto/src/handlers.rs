//! The table of the peer's calls that run on one link, and the admission rule for a new one:
//! at most `max` at once, and no call id twice.
//!
//! The table holds whatever the driver keeps per running call (`H`: the handle that aborts
//! the handler, what it holds of the link's budgets); it decides, the driver acts.
//!
//! ```
//! use courier_proto::handlers::{HandlerTable, Refused};
//!
//! let mut running = HandlerTable::new(2);
//! running.insert(1, "handler 1").expect("room");
//! assert_eq!(running.insert(1, "again").map_err(|(why, _)| why), Err(Refused::Running { call_id: 1 }));
//! running.insert(2, "handler 2").expect("room");
//! assert_eq!(running.check(3), Err(Refused::Full { max: 2 }));
//! assert_eq!(running.remove(1), Some("handler 1"));
//! assert_eq!(running.check(3), Ok(()));
//! ```

use std::collections::HashMap;

/// Why a call cannot join the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refused {
    /// `max` calls already run: the call is refused with `Overloaded`.
    Full {
        /// The table's limit.
        max: usize,
    },
    /// A call with this id already runs: the call is refused with `Protocol`.
    Running {
        /// The id taken.
        call_id: u64,
    },
}

/// The peer's calls running on one link, by call id, at most `max` at once.
#[derive(Debug)]
pub struct HandlerTable<H> {
    max: usize,
    running: HashMap<u64, H>,
}

impl<H> HandlerTable<H> {
    /// An empty table that admits at most `max` calls at once.
    pub fn new(max: usize) -> Self {
        HandlerTable {
            max,
            running: HashMap::new(),
        }
    }

    /// Whether call `call_id` may join now (without joining).
    pub fn check(&self, call_id: u64) -> Result<(), Refused> {
        if self.running.len() >= self.max {
            return Err(Refused::Full { max: self.max });
        }
        if self.running.contains_key(&call_id) {
            return Err(Refused::Running { call_id });
        }
        Ok(())
    }

    /// Whether one more call would be admitted, whatever its id.
    pub fn has_room(&self) -> bool {
        self.running.len() < self.max
    }

    /// Admits call `call_id` with `handler`, or gives `handler` back with the reason.
    pub fn insert(&mut self, call_id: u64, handler: H) -> Result<(), (Refused, H)> {
        match self.check(call_id) {
            Ok(()) => {
                self.running.insert(call_id, handler);
                Ok(())
            }
            Err(why) => Err((why, handler)),
        }
    }

    /// Call `call_id` ended (or was cancelled): its entry, if it was running.
    pub fn remove(&mut self, call_id: u64) -> Option<H> {
        self.running.remove(&call_id)
    }

    /// The entry of call `call_id`, if it runs.
    pub fn get_mut(&mut self, call_id: u64) -> Option<&mut H> {
        self.running.get_mut(&call_id)
    }

    /// How many calls run.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    /// Whether no call runs.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// The link is gone: keeps the entries `keep` says go on (a one-way handler runs to its
    /// end) and drops the others (the driver aborts those in `keep`).
    pub fn retain(&mut self, mut keep: impl FnMut(&mut H) -> bool) {
        self.running.retain(|_, h| keep(h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_stops_at_the_limit_and_reopens_as_calls_end() {
        let mut t = HandlerTable::new(3);
        for id in 1..=3 {
            assert!(t.has_room());
            t.insert(id, id * 10).expect("room");
        }
        assert!(!t.has_room());
        assert_eq!(t.check(4), Err(Refused::Full { max: 3 }));
        let (why, back) = t.insert(4, 40).expect_err("full");
        assert_eq!((why, back), (Refused::Full { max: 3 }, 40));
        assert_eq!(t.remove(2), Some(20));
        assert_eq!(t.remove(2), None, "an entry ends once");
        t.insert(4, 40).expect("room again");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_running_call_id_is_refused_before_the_limit_is_looked_at() {
        let mut t = HandlerTable::new(1);
        t.insert(7, ()).expect("room");
        // Full, and 7 runs: full is said first (the driver refuses with Overloaded).
        assert_eq!(t.check(7), Err(Refused::Full { max: 1 }));
        let mut t = HandlerTable::new(2);
        t.insert(7, ()).expect("room");
        assert_eq!(t.check(7), Err(Refused::Running { call_id: 7 }));
        assert_eq!(t.check(8), Ok(()));
    }

    #[test]
    fn a_table_of_no_room_admits_nothing() {
        let mut t = HandlerTable::new(0);
        assert_eq!(
            t.insert(1, ()).map_err(|(w, _)| w),
            Err(Refused::Full { max: 0 })
        );
        assert!(t.is_empty());
    }

    #[test]
    fn a_lost_link_keeps_only_what_goes_on() {
        let mut t = HandlerTable::new(8);
        for id in 0..6 {
            t.insert(id, id).expect("room");
        }
        let mut dropped = Vec::new();
        // Say the odd ones are one-way handlers, which run to their end.
        t.retain(|h| {
            let keep = *h % 2 == 1;
            if !keep {
                dropped.push(*h);
            }
            keep
        });
        assert_eq!((t.len(), dropped.len()), (3, 3));
        assert_eq!(t.remove(1), Some(1));
        assert_eq!(t.remove(0), None);
    }
}

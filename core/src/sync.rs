//! The one way this crate takes a mutex.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, whose data stays consistent even if a holder panicked: every critical section in
/// this crate is a few field or map operations that cannot be left half done.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

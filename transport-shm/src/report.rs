//! A report on every shared-memory link of this process: what a watchdog prints when calls
//! stop moving, so that a rare stall leaves evidence of who was waiting for whom.

use std::sync::{Arc, Mutex, Weak};

use crate::reader::Reading;

/// The links of this process, held weakly: a closed link drops out of the report.
static LINKS: Mutex<Vec<Weak<Reading>>> = Mutex::new(Vec::new());

/// Adds a new link to the report (and forgets links that have gone).
pub(crate) fn register(reading: &Arc<Reading>) {
    let mut links = crate::end::lock(&LINKS);
    links.retain(|link| link.strong_count() > 0);
    links.push(Arc::downgrade(reading));
}

/// What every live shared-memory link of this process is doing now, two lines a link: both
/// rings' positions and flags as the shared segment holds them, whether a sender waits for
/// room, what the reading task does, how many callers look at the ring for their replies, and
/// who holds the reader.
///
/// Meant for a watchdog's report when calls stop moving. Each value is read on its own,
/// without stopping the link, so the lines are a close picture, not an atomic one.
///
/// ```
/// // No link in this process yet: an empty report.
/// assert!(courier_shm::report().is_empty());
/// ```
pub fn report() -> String {
    let links: Vec<Arc<Reading>> = crate::end::lock(&LINKS)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    let mut out = String::new();
    for (i, link) in links.iter().enumerate() {
        out.push_str(&format!(
            "link {i}: {}\n  {}\n",
            link.end.describe(),
            link.describe()
        ));
    }
    out
}

//! Sessions: what outlives a link, as state machines without I/O.
//!
//! A session is one client identity (id and epoch) talking to one server, across as many links
//! as it takes. Its logic lives here as plain data structures that take frames, call ids and
//! instants in and give decisions out: which frames to send again, which callers to fail and
//! how, which handlers to abort, which reply to answer a copy with. Nothing here spawns a task,
//! starts a timer or touches a link, so every rule is unit-tested directly; the async driver
//! that owns the links and the timers (in `courier`: the client's session and the server's
//! connection engine) stays thin.
//!
//! - [`calls`]: the client's table of calls in flight, re-sent after a reconnect or an attempt
//!   timeout, and failed with *outcome unknown* when the server restarted under an
//!   at-most-once call.
//! - [`replies`]: the server's sessions keyed by client id: epochs, the handlers running for
//!   each client, and the reply cache that makes at-most-once calls run at most once.

mod call_map;
pub mod calls;
pub mod replies;

#[cfg(test)]
mod model;

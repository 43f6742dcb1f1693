//! Calls this side makes over one link: the call table, sending, waiting, cancelling.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{budget, lock, ReplyResult, Shared};
use crate::error::RpcError;
use crate::ids::{InterfaceId, MethodDesc, MethodId};
use crate::transport::{FrameBuf, ReplyReader};
use crate::wire::{Flags, FrameKind, Header};

pub(super) struct PendingCall {
    pub(super) reply: oneshot::Sender<ReplyResult>,
    pub(super) ack: Option<oneshot::Sender<()>>,
}

impl Shared {
    /// Registers a call in the table and sends it. The returned [`CallSlot`] resolves with the
    /// reply; dropping it before then cancels the call.
    pub(crate) async fn begin_call<F>(
        self: &Arc<Self>,
        method: &MethodDesc,
        deadline: Option<Instant>,
        flags: Flags,
        size_hint: usize,
        body: F,
    ) -> Result<CallSlot, RpcError>
    where
        F: FnOnce(&mut dyn FrameBuf) -> Result<(), RpcError>,
    {
        let permit = super::in_flight_slot(&self.in_flight, deadline)
            .await?
            .map_err(|()| self.lost())?;
        let budget_micros = budget(deadline)?;
        let call_id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        let (reply_tx, reply) = oneshot::channel();
        let (ack_tx, ack) = if flags.contains(Flags::ACK) {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        {
            let mut calls = lock(&self.calls);
            // Checked under the table's lock: `close` drains the table under it, so a call
            // inserted after the drain would wait forever.
            if self.is_closed() {
                return Err(self.lost());
            }
            calls.insert(
                call_id,
                PendingCall {
                    reply: reply_tx,
                    ack: ack_tx,
                },
            );
        }
        let guard = CallGuard {
            shared: Arc::clone(self),
            call_id,
            interface: method.interface,
            method: method.method,
            cancel_on_drop: true,
            finished: false,
            _permit: permit,
        };
        let header = Header {
            flags,
            version: method.version,
            budget_micros,
            ..Header::new(FrameKind::Call, call_id, method.interface, method.method)
        };
        let buf = self.fill_frame(header, size_hint, body).await?;
        let reader = self
            .tx
            .send_call(buf)
            .await
            .map_err(|e| self.transport_error(e))?;
        Ok(CallSlot {
            reply,
            ack,
            deadline,
            guard,
            reader,
        })
    }

    /// Sends a one-way call; resolves once the transport has taken it.
    pub(crate) async fn send_one_way<F>(
        &self,
        method: &MethodDesc,
        flags: Flags,
        size_hint: usize,
        body: F,
    ) -> Result<(), RpcError>
    where
        F: FnOnce(&mut dyn FrameBuf) -> Result<(), RpcError>,
    {
        if self.is_closed() {
            return Err(self.lost());
        }
        // One-way calls take ids from the same sequence as the others: the server keys its
        // handlers by call id, so a shared id would refuse a one-way call while another runs.
        let call_id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        let header = Header {
            flags,
            version: method.version,
            ..Header::new(FrameKind::OneWay, call_id, method.interface, method.method)
        };
        self.send_frame(header, size_hint, body).await
    }
}

/// A call registered in the table and sent.
pub(crate) struct CallSlot {
    reply: oneshot::Receiver<ReplyResult>,
    ack: Option<oneshot::Receiver<()>>,
    deadline: Option<Instant>,
    guard: CallGuard,
    /// The transport's reading of this call's reply stream, if it hands that to the caller
    /// ([`LinkTx::send_call`]): polled while the caller waits.
    reader: Option<ReplyReader>,
}

impl CallSlot {
    /// The call's id.
    pub(crate) fn id(&self) -> u64 {
        self.guard.call_id
    }
}

/// Waits for `wait` while polling `reader`, reader first, so that a reply it delivers is seen
/// in the same poll. A finished reader is dropped.
pub(crate) async fn driven<T>(
    reader: &mut Option<ReplyReader>,
    wait: impl std::future::Future<Output = T>,
) -> T {
    let mut wait = std::pin::pin!(wait);
    std::future::poll_fn(|cx| {
        if let Some(r) = reader {
            if r.as_mut().poll(cx).is_ready() {
                *reader = None;
            }
        }
        wait.as_mut().poll(cx)
    })
    .await
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        // A reader still running: if the call was answered or runs on without a caller (it
        // was acknowledged), let it read to the end of its stream on the runtime; otherwise
        // dropping it is what cancels the call.
        if let Some(reader) = self.reader.take() {
            if self.guard.finished || !self.guard.cancel_on_drop {
                self.guard.shared.runtime.spawn(reader);
            }
        }
    }
}

impl CallSlot {
    /// Waits for the reply frame, within the deadline.
    pub(crate) async fn reply(mut self) -> ReplyResult {
        let reply = &mut self.reply;
        let reader = &mut self.reader;
        let received = match self.deadline {
            Some(d) => driven(reader, crate::deadline::within(d, reply))
                .await
                .map_err(|_| RpcError::DeadlineExceeded)?,
            None => driven(reader, reply).await,
        };
        self.guard.finished = true;
        received.map_err(|_| self.guard.shared.lost())?
    }

    /// Waits for the server's ack (or an early reply, such as an error), within the deadline.
    /// Afterwards, dropping the slot no longer cancels the call: it runs to completion.
    pub(crate) async fn acked(mut self) -> Result<CallSlot, RpcError> {
        if let Some(ack) = self.ack.take() {
            let early = &mut self.reply;
            let wait = async {
                tokio::select! {
                    // Either an ack, or the sender dropped because a reply or error arrived
                    // first; both mean the server has the call.
                    _ = ack => Ok::<_, RpcError>(None),
                    r = early => Ok(Some(r)),
                }
            };
            let reader = &mut self.reader;
            let got = match self.deadline {
                Some(d) => driven(reader, tokio::time::timeout_at(d, wait))
                    .await
                    .map_err(|_| RpcError::DeadlineExceeded)?,
                None => driven(reader, wait).await,
            }?;
            if let Some(early) = got {
                let result = early.map_err(|_| self.guard.shared.lost())?;
                self.guard.finished = true;
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(result);
                self.reply = rx;
            }
        }
        self.guard.cancel_on_drop = false;
        Ok(self)
    }
}

/// Removes a call from the table if its caller goes away, and tells the server to drop it.
struct CallGuard {
    shared: Arc<Shared>,
    call_id: u64,
    interface: InterfaceId,
    method: MethodId,
    cancel_on_drop: bool,
    finished: bool,
    _permit: crate::budget::Taken,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let was_pending = lock(&self.shared.calls).remove(&self.call_id).is_some();
        if was_pending && self.cancel_on_drop && !self.shared.is_closed() {
            let shared = Arc::clone(&self.shared);
            let header = Header::new(FrameKind::Cancel, self.call_id, self.interface, self.method);
            self.shared.runtime.spawn(async move {
                let _ = shared.send_frame(header, 0, |_| Ok(())).await;
            });
        }
    }
}

//! One TLS connection over TCP as a Courier [`Link`].
//!
//! The connection is one ordered byte stream in each direction:
//!
//! - The first message each way (the client's hello, the server's welcome) has its length
//!   before it, 4 bytes big-endian; it is at most [`MAX_HANDSHAKE`] bytes.
//! - Every later message is a Courier frame, written whole and back to back: its header says
//!   its length (`HEADER_LEN` plus the payload length at offset 24), so no other framing is
//!   needed.
//! - A frame larger than this side's limit is not read: its header goes to the engine alone
//!   (which fails the call with `FrameTooLarge`) and its other bytes are skipped as they come,
//!   so memory stays bounded and the calls after it go on.
//! - A frame that has begun must arrive whole within the frame timeout, or the connection is
//!   closed: on a byte stream a stalled frame stalls everything behind it.
//!
//! Sending needs no task of its own: a sender that finds nobody writing writes its frame itself
//! and then whatever others queued meanwhile, so a lone call leaves from its caller's task,
//! and calls that come together leave in one TLS record and one system call. The queue is
//! bounded: a full one makes senders wait (the back-pressure of a peer that reads slowly).
//! Closing writes what was queued, then TLS's `close_notify`, then shuts the socket's sending
//! side.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use courier::transport::{heap_buffer, take_heap_buffer, FrameBuf, Link, LinkRx, LinkTx, TrySend};
use courier::wire::{Claims, HEADER_LEN};
use courier::{Peer, TransportError};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_rustls::TlsStream;

use crate::TcpOptions;

/// Largest hello or welcome accepted.
pub(crate) const MAX_HANDSHAKE: usize = 1024;
/// Small frames are gathered into a buffer of up to this many bytes before a write.
const GATHER: usize = 64 * 1024;
/// Frames at least this large are written as they are, not copied into the gathering buffer.
const LARGE: usize = 16 * 1024;
/// How much a read asks for at least: many small frames arrive in one read.
const READ_CHUNK: usize = 64 * 1024;

type Stream = TlsStream<TcpStream>;

/// Makes a link of an established TLS connection.
pub(crate) fn link(stream: Stream, peer: Peer, options: &TcpOptions) -> Link {
    let (read, write) = tokio::io::split(stream);
    let tx = Tx(Arc::new(Sending {
        writer: Arc::new(tokio::sync::Mutex::new(Writer {
            write,
            first: true,
            gathered: Vec::with_capacity(GATHER),
            failed: false,
        })),
        queue: Mutex::new(Queue::default()),
        room: Notify::new(),
        limit: options.send_queue,
    }));
    let rx = Rx {
        read,
        buf: BytesMut::new(),
        first: true,
        skip: 0,
        limit: options.max_frame_size.max(HEADER_LEN),
        frame_timeout: options.frame_timeout,
    };
    Link {
        tx: Box::new(tx),
        rx: Box::new(rx),
        peer,
    }
}

/// The sending half. Whoever sends while nobody writes becomes the writer: it writes its own
/// frame, then whatever others queued meanwhile, and flushes; so a lone call goes out from its
/// caller's task, with no hand-off to a writer task (and no wake-up of a sleeping thread),
/// while calls that come together leave in one TLS record and one system call.
#[derive(Debug)]
struct Tx(Arc<Sending>);

#[derive(Debug)]
struct Sending {
    /// The socket's sending half; held by the one sender that writes (see [`Queue::busy`]),
    /// or by the close.
    writer: Arc<tokio::sync::Mutex<Writer>>,
    queue: Mutex<Queue>,
    /// Signalled when the queue has room again, or the link closed.
    room: Notify,
    limit: usize,
}

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// A sender is writing: frames queued now are written by it before it stops.
    busy: bool,
    /// [`LinkTx::close`] was called, or the socket failed: nothing more is taken.
    closed: bool,
}

#[derive(Debug)]
struct Writer {
    write: WriteHalf<Stream>,
    /// The hello or welcome, with its length before it, is still to go.
    first: bool,
    gathered: Vec<u8>,
    failed: bool,
}

impl Writer {
    /// Writes `frame`: small ones are gathered, to go out together at the next flush.
    async fn put(&mut self, frame: &[u8]) -> std::io::Result<()> {
        if self.first {
            // The hello or the welcome: its length before it.
            self.first = false;
            let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
            self.gathered.extend_from_slice(&len.to_be_bytes());
        }
        if frame.len() >= LARGE {
            self.write_gathered().await?;
            self.write.write_all(frame).await
        } else {
            self.gathered.extend_from_slice(frame);
            if self.gathered.len() >= GATHER {
                self.write_gathered().await?;
            }
            Ok(())
        }
    }

    async fn write_gathered(&mut self) -> std::io::Result<()> {
        if !self.gathered.is_empty() {
            self.write.write_all(&self.gathered).await?;
            self.gathered.clear();
        }
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.write_gathered().await?;
        self.write.flush().await
    }
}

fn lock_queue(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a sender does with its frame, decided under the queue's lock.
enum Turn {
    /// Queued: the sender that is writing will write it.
    Queued,
    /// Nobody writes: this sender writes, starting with its own frame.
    Write(Bytes),
    /// The queue is full: wait for room, then try again.
    Full(Bytes),
}

impl Sending {
    fn turn(&self, frame: Bytes) -> Result<Turn, TransportError> {
        let mut queue = lock_queue(&self.queue);
        if queue.closed {
            return Err(TransportError::Closed);
        }
        if !queue.busy {
            queue.busy = true;
            return Ok(Turn::Write(frame));
        }
        if queue.frames.len() >= self.limit {
            return Ok(Turn::Full(frame));
        }
        queue.frames.push_back(frame);
        Ok(Turn::Queued)
    }

    async fn send(self: &Arc<Self>, mut frame: Bytes) -> Result<(), TransportError> {
        loop {
            // Registered before the turn is decided, so that room freed in between is seen.
            let room = self.room.notified();
            match self.turn(frame)? {
                Turn::Queued => return Ok(()),
                Turn::Write(frame) => return self.start_writing(frame),
                Turn::Full(back) => {
                    frame = back;
                    room.await;
                }
            }
        }
    }

    /// Writes `first` and what queues behind it, on this task as far as that goes without
    /// waiting for the socket. If the socket makes it wait, the rest goes on a task of its own:
    /// the sender is not held up by others' frames, and a sender whose future is dropped
    /// cannot leave half a frame on the stream.
    fn start_writing(self: &Arc<Self>, first: Bytes) -> Result<(), TransportError> {
        let Ok(writer) = Arc::clone(&self.writer).try_lock_owned() else {
            // Only the close holds it while a sender may write: the link is closing.
            lock_queue(&self.queue).busy = false;
            self.room.notify_waiters();
            return Err(TransportError::Closed);
        };
        let mut writing = Box::pin(drain(Arc::clone(self), writer, first));
        match (&mut writing).now_or_never() {
            Some(outcome) => outcome,
            None => {
                tokio::spawn(async move {
                    let _: Result<(), TransportError> = writing.await;
                });
                Ok(())
            }
        }
    }

    /// After [`LinkTx::close`]: once the writer (if any) has written what was queued, TLS's
    /// close_notify and the end of the TCP stream.
    async fn finish(&self) {
        let mut writer = self.writer.lock().await;
        // The writer's lock is taken after any sender that was writing stopped, and nobody
        // can start again (the queue is closed): what is left in the queue goes now.
        let left: Vec<Bytes> = lock_queue(&self.queue).frames.drain(..).collect();
        for frame in left {
            if writer.failed || writer.put(&frame).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_ok() {
            let _ = writer.write.shutdown().await;
        }
    }
}

/// Writes `first`, then what the queue holds, until it is empty; then flushes and stops
/// being the writer. A frame queued before the queue is found empty is written here; one
/// queued after makes its sender the writer.
async fn drain(
    sending: Arc<Sending>,
    mut writer: tokio::sync::OwnedMutexGuard<Writer>,
    first: Bytes,
) -> Result<(), TransportError> {
    let mut batch = vec![first];
    let outcome = loop {
        for frame in batch.drain(..) {
            if !writer.failed && writer.put(&frame).await.is_err() {
                writer.failed = true;
            }
        }
        if !writer.failed && writer.flush().await.is_err() {
            writer.failed = true;
        }
        let mut queue = lock_queue(&sending.queue);
        // Stopping, the writer lets go of the socket before the queue's lock, under which
        // the next sender finds nobody writing: that sender then finds the socket free.
        if writer.failed {
            // The socket is gone: the queued frames with it, and every later send fails.
            queue.closed = true;
            queue.frames.clear();
            queue.busy = false;
            drop(writer);
            break Err(TransportError::Closed);
        }
        if queue.frames.is_empty() {
            queue.busy = false;
            drop(writer);
            break Ok(());
        }
        batch.extend(queue.frames.drain(..));
        drop(queue);
        sending.room.notify_waiters();
    };
    sending.room.notify_waiters();
    outcome
}

impl LinkTx for Tx {
    fn buffer(&self, size_hint: usize) -> BoxFuture<'_, Result<Box<dyn FrameBuf>, TransportError>> {
        Box::pin(async move { Ok(heap_buffer(size_hint)) })
    }

    fn try_buffer(&self, size_hint: usize) -> Option<Box<dyn FrameBuf>> {
        Some(heap_buffer(size_hint))
    }

    fn send(&self, message: Box<dyn FrameBuf>) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            let frame = take_heap_buffer(message, "TCP")?.freeze();
            self.0.send(frame).await
        })
    }

    fn close(&self) {
        {
            let mut queue = lock_queue(&self.0.queue);
            if queue.closed {
                return;
            }
            queue.closed = true;
        }
        self.0.room.notify_waiters();
        // Writing what is queued may wait for the peer; it goes on without the caller.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let sending = Arc::clone(&self.0);
            runtime.spawn(async move { sending.finish().await });
        }
    }

    fn send_shared(&self, frame: Bytes) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(self.0.send(frame))
    }

    fn try_send_shared(&self, frame: Bytes) -> TrySend {
        // Joins the batch of a sender that is writing, if there is one with room; otherwise
        // the engine sends it with `send_shared`, which writes it.
        let mut queue = lock_queue(&self.0.queue);
        if queue.closed {
            return TrySend::Failed(TransportError::Closed);
        }
        if queue.busy && queue.frames.len() < self.0.limit {
            queue.frames.push_back(frame);
            return TrySend::Sent;
        }
        TrySend::Wait(frame)
    }
}

/// The receiving half: reads messages off the stream, one at a time.
#[derive(Debug)]
struct Rx {
    read: ReadHalf<Stream>,
    buf: BytesMut,
    /// The handshake message (length-prefixed) is still to come.
    first: bool,
    /// Bytes of a refused frame still to skip.
    skip: usize,
    limit: usize,
    frame_timeout: Duration,
}

impl Rx {
    /// Reads until `n` bytes are buffered; false at the end of the stream.
    async fn fill(&mut self, n: usize) -> Result<bool, TransportError> {
        while self.buf.len() < n {
            self.buf.reserve((n - self.buf.len()).max(READ_CHUNK));
            let read = self
                .read
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| TransportError::io("reading the TLS connection", e))?;
            if read == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// [`Rx::fill`] for the rest of a message that has begun: within the frame timeout, and
    /// with the end of the stream an error.
    async fn fill_rest(&mut self, n: usize, what: &str) -> Result<(), TransportError> {
        let timeout = self.frame_timeout;
        match tokio::time::timeout(timeout, self.fill(n)).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err(TransportError::Other(format!(
                "the peer closed the connection in the middle of {what}"
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TransportError::Timeout(format!(
                "{what} did not arrive whole within {timeout:?}"
            ))),
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, TransportError> {
        if self.first {
            self.first = false;
            if !self.fill(4).await? {
                return Ok(None);
            }
            let len = self.buf.get_u32() as usize;
            if len > MAX_HANDSHAKE {
                return Err(TransportError::Other(format!(
                    "a handshake message of {len} bytes (at most {MAX_HANDSHAKE})"
                )));
            }
            self.fill_rest(len, "a handshake message").await?;
            return Ok(Some(self.buf.split_to(len).freeze()));
        }
        while self.skip > 0 {
            if self.buf.is_empty() && !self.fill(1).await? {
                return Ok(None);
            }
            let n = self.skip.min(self.buf.len());
            self.buf.advance(n);
            self.skip -= n;
        }
        if !self.fill(1).await? {
            return Ok(None);
        }
        self.fill_rest(HEADER_LEN, "a frame's header").await?;
        let size = Claims::read(&self.buf[..HEADER_LEN])
            .declared_size()
            .unwrap_or(HEADER_LEN);
        if size > self.limit {
            // Not read: the header alone tells the engine what was refused.
            self.skip = size - HEADER_LEN;
            return Ok(Some(self.buf.split_to(HEADER_LEN).freeze()));
        }
        self.fill_rest(size, "a frame").await?;
        Ok(Some(self.buf.split_to(size).freeze()))
    }
}

impl LinkRx for Rx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>> {
        Box::pin(self.next())
    }

    fn frame_limit(&self) -> Option<usize> {
        Some(self.limit)
    }
}

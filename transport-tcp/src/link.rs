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
//! Sending goes through one writer task, fed by a bounded queue: small frames that queue up
//! together go out in one TLS record and one system call; a full queue makes senders wait
//! (the back-pressure of a peer that reads slowly). Closing writes what was queued, then TLS's
//! `close_notify`, then shuts the socket's sending side.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use courier::transport::{heap_buffer, take_heap_buffer, FrameBuf, Link, LinkRx, LinkTx, TrySend};
use courier::wire::{Claims, HEADER_LEN};
use courier::{Peer, TransportError};
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
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
    let (queue, frames) = mpsc::channel(options.send_queue);
    let state = Arc::new(State {
        closing: AtomicBool::new(false),
        close: Notify::new(),
    });
    tokio::spawn(write_loop(write, frames, Arc::clone(&state)));
    let tx = Tx { queue, state };
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

/// What the senders and the writer share.
#[derive(Debug)]
struct State {
    /// Set by [`LinkTx::close`]: nothing more is taken, and the writer ends once the queue is
    /// written.
    closing: AtomicBool,
    close: Notify,
}

/// The sending half: a queue to the writer task.
#[derive(Debug)]
struct Tx {
    queue: mpsc::Sender<Bytes>,
    state: Arc<State>,
}

impl Tx {
    async fn push(&self, frame: Bytes) -> Result<(), TransportError> {
        if self.state.closing.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        self.queue
            .send(frame)
            .await
            .map_err(|_| TransportError::Closed)
    }
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
            self.push(frame).await
        })
    }

    fn close(&self) {
        self.state.closing.store(true, Ordering::Release);
        self.state.close.notify_one();
    }

    fn send_shared(&self, frame: Bytes) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(self.push(frame))
    }

    fn try_send_shared(&self, frame: Bytes) -> TrySend {
        if self.state.closing.load(Ordering::Acquire) {
            return TrySend::Failed(TransportError::Closed);
        }
        match self.queue.try_send(frame) {
            Ok(()) => TrySend::Sent,
            Err(mpsc::error::TrySendError::Full(frame)) => TrySend::Wait(frame),
            Err(mpsc::error::TrySendError::Closed(_)) => TrySend::Failed(TransportError::Closed),
        }
    }
}

/// Writes the queued frames until the link closes or the socket fails.
async fn write_loop(
    mut write: WriteHalf<Stream>,
    mut frames: mpsc::Receiver<Bytes>,
    state: Arc<State>,
) {
    let mut first = true;
    let mut gathered: Vec<u8> = Vec::with_capacity(GATHER);
    loop {
        let frame = tokio::select! {
            biased;
            frame = frames.recv() => frame,
            () = state.close.notified() => None,
        };
        let Some(frame) = frame else { break };
        let mut next = Some(frame);
        while let Some(frame) = next.take() {
            if first {
                // The hello or the welcome: its length before it.
                first = false;
                let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                gathered.extend_from_slice(&len.to_be_bytes());
            }
            if frame.len() >= LARGE {
                if write_all(&mut write, &mut gathered).await.is_err()
                    || write.write_all(&frame).await.is_err()
                {
                    return;
                }
            } else {
                gathered.extend_from_slice(&frame);
                if gathered.len() >= GATHER && write_all(&mut write, &mut gathered).await.is_err() {
                    return;
                }
            }
            next = frames.try_recv().ok();
        }
        if write_all(&mut write, &mut gathered).await.is_err() || write.flush().await.is_err() {
            return;
        }
    }
    // Closing: what was queued before the close still goes, then close_notify and FIN.
    frames.close();
    while let Ok(frame) = frames.try_recv() {
        gathered.extend_from_slice(&frame);
        if write_all(&mut write, &mut gathered).await.is_err() {
            return;
        }
    }
    if write_all(&mut write, &mut gathered).await.is_ok() {
        let _ = write.shutdown().await;
    }
}

async fn write_all(write: &mut WriteHalf<Stream>, gathered: &mut Vec<u8>) -> std::io::Result<()> {
    if !gathered.is_empty() {
        write.write_all(gathered).await?;
        gathered.clear();
    }
    Ok(())
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
            return Ok(Some(self.take(len)));
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
            return Ok(Some(self.take(HEADER_LEN)));
        }
        self.fill_rest(size, "a frame").await?;
        Ok(Some(self.take(size)))
    }

    /// The next `n` buffered bytes as a message of their own. A message smaller than a read
    /// is copied out: split off, it would keep the whole read's buffer alive for as long as
    /// its handler runs, so a peer sending one small call per read could make each running
    /// call hold 64 KiB. A larger message was read into a buffer sized for it, and is split
    /// off without a copy.
    fn take(&mut self, n: usize) -> Bytes {
        if n < READ_CHUNK {
            let message = Bytes::copy_from_slice(&self.buf[..n]);
            self.buf.advance(n);
            message
        } else {
            self.buf.split_to(n).freeze()
        }
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

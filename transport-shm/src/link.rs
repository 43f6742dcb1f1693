//! Listener, connector and link over a shared segment.
//!
//! The server listens on a Unix socket. For each connection it reads the client's credentials
//! (`SO_PEERCRED`: they become the [`Peer`]), creates an anonymous memory file holding two rings
//! (client to server, server to client) and two eventfds (one doorbell per side), and passes the
//! three descriptors over the socket (`SCM_RIGHTS`). Both map the segment. From then on frames
//! travel through the rings; the socket carries nothing more, and its end is how each side
//! learns that the other is gone.
//!
//! Receiving spins briefly when its ring is empty, then sets its `sleeping` flag and waits on
//! its doorbell; a sender rings the doorbell only when that flag is set. A sender that finds the
//! ring full backs off until the receiver frees room.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use courier::transport::{FrameBuf, Link, LinkRx, LinkTx};
use courier::{Peer, TransportError};
use futures::future::BoxFuture;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::ring::{Consumer, Producer, HEADER};
use crate::sys::{self, Mapping};

/// Frames queued between the receiving task and the connection.
const QUEUE_DEPTH: usize = 256;

/// Settings of a shared-memory listener or connector. Each has a documented default.
#[derive(Debug, Clone)]
pub struct ShmOptions {
    ring_capacity: usize,
    max_frame_size: usize,
    mode: u32,
    spin: u32,
}

impl Default for ShmOptions {
    fn default() -> Self {
        ShmOptions {
            ring_capacity: 1 << 20,
            max_frame_size: courier::Limits::default().frame_size_limit(),
            mode: 0o600,
            spin: 64,
        }
    }
}

impl ShmOptions {
    /// Bytes in each direction's ring, rounded up to a power of two (at least 4 KiB). Larger
    /// frames still go through, in pieces. Default: 1 MiB. Chosen by the server.
    pub fn ring_capacity(mut self, bytes: usize) -> Self {
        self.ring_capacity = bytes.max(4096).next_power_of_two();
        self
    }

    /// Largest frame accepted from the peer. Default: the same as [`courier::Limits`].
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes.max(courier::wire::HEADER_LEN);
        self
    }

    /// How many times the receiver looks again (yielding to other tasks in between) after
    /// finding its ring empty, before it goes to sleep on its doorbell. Spinning keeps a busy
    /// connection free of system calls; sleeping frees the core. Default: 64; 0 sleeps at once.
    pub fn spin(mut self, rounds: u32) -> Self {
        self.spin = rounds;
        self
    }

    /// Permission bits of the listener's socket file. Default: `0o600`, owner only; widen it
    /// (and decide with an `Authorizer` on the peer's uid) to serve other users.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
}

fn io_error(context: &str, e: io::Error) -> TransportError {
    TransportError::Other(format!("{context}: {e}"))
}

/// One end of a connection's segment.
struct End {
    map: Arc<Mapping>,
    producer: tokio::sync::Mutex<Producer>,
    peer_bell: OwnedFd,
    socket: Arc<UnixStream>,
}

impl std::fmt::Debug for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmLink")
            .field("segment_bytes", &self.map.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Tx(Arc<End>);

impl Tx {
    async fn push(&self, frame: &[u8]) -> Result<(), TransportError> {
        let end = &self.0;
        let mut producer = end.producer.lock().await;
        let chunk = producer.max_record();
        // A frame is never empty (it has a header), so `chunks` yields at least one part.
        let last = frame.len().saturating_sub(1) / chunk;
        for (i, part) in frame.chunks(chunk).enumerate() {
            let more = i != last;
            let mut backoff = 0u32;
            loop {
                match producer.try_push(part, more) {
                    Ok(true) => break,
                    Ok(false) => {
                        // Full: say so, let the receiver drain, and try again.
                        producer.set_waiting(true);
                        if producer.consumer_sleeping() {
                            sys::ring(end.peer_bell.as_raw_fd());
                        }
                        if backoff < 16 {
                            tokio::task::yield_now().await;
                        } else {
                            tokio::time::sleep(Duration::from_micros(50)).await;
                        }
                        backoff += 1;
                    }
                    Err(e) => return Err(TransportError::Other(e.to_string())),
                }
            }
            producer.set_waiting(false);
            if producer.consumer_sleeping() {
                sys::ring(end.peer_bell.as_raw_fd());
            }
        }
        Ok(())
    }
}

impl LinkTx for Tx {
    fn buffer(&self, size_hint: usize) -> BoxFuture<'_, Result<Box<dyn FrameBuf>, TransportError>> {
        let buf = courier::transport::heap_buffer(size_hint);
        Box::pin(async move { Ok(buf) })
    }

    fn send(&self, message: Box<dyn FrameBuf>) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            let buf = courier::transport::take_heap_buffer(message, "shared-memory")?;
            self.push(&buf).await
        })
    }

    fn close(&self) {
        // The peer reads the end of the stream and closes its side; our receiver sees the
        // same and stops.
        sys::shutdown(self.0.socket.as_raw_fd());
    }
}

#[derive(Debug)]
struct Rx {
    frames: mpsc::Receiver<Bytes>,
    max_frame: usize,
}

impl LinkRx for Rx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>> {
        Box::pin(async move { Ok(self.frames.recv().await) })
    }

    fn frame_limit(&self) -> Option<usize> {
        Some(self.max_frame)
    }
}

/// Takes frames out of the receiving ring until the peer goes away or breaks the rules.
async fn receive(
    end: Arc<End>,
    mut consumer: Consumer,
    bell: AsyncFd<OwnedFd>,
    frames: mpsc::Sender<Bytes>,
    spin: u32,
) {
    let reason = 'outer: loop {
        let mut idle = 0;
        loop {
            match consumer.try_pop() {
                Ok(Some(frame)) => {
                    idle = 0;
                    if consumer.producer_waiting() {
                        sys::ring(end.peer_bell.as_raw_fd());
                    }
                    if frames.send(Bytes::from(frame)).await.is_err() {
                        break 'outer "the connection closed";
                    }
                }
                Ok(None) if idle < spin => {
                    idle += 1;
                    if consumer.producer_waiting() {
                        sys::ring(end.peer_bell.as_raw_fd());
                    }
                    tokio::task::yield_now().await;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a shared-memory connection");
                    break 'outer "the peer corrupted the shared segment";
                }
            }
        }
        // Going to sleep: say so, then look once more, so a frame published meanwhile is seen.
        consumer.set_sleeping(true);
        match consumer.try_pop() {
            Ok(Some(frame)) => {
                consumer.set_sleeping(false);
                if frames.send(Bytes::from(frame)).await.is_err() {
                    break "the connection closed";
                }
                continue;
            }
            Ok(None) => {}
            Err(_) => break "the peer corrupted the shared segment",
        }
        tokio::select! {
            ready = bell.readable() => {
                if let Ok(mut guard) = ready {
                    // Clear first, then drain: a ring after the drain raises readiness anew.
                    guard.clear_ready();
                    sys::drain(bell.as_raw_fd());
                }
            }
            gone = peer_gone(&end.socket) => {
                if gone {
                    break "the peer closed the connection";
                }
            }
        }
        consumer.set_sleeping(false);
    };
    tracing::debug!(reason, "shared-memory receiver stopped");
    drop(frames);
}

/// Waits until the socket is readable; true if that is the end of the stream (the peer is
/// gone). The socket carries nothing after the set-up, so any byte is also the end.
async fn peer_gone(socket: &UnixStream) -> bool {
    if socket.readable().await.is_err() {
        return true;
    }
    let mut byte = [0u8; 1];
    match socket.try_read(&mut byte) {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

fn segment_len(capacity: usize) -> usize {
    2 * (HEADER + capacity)
}

/// The doorbells of one end: the one it waits on and the one it rings.
struct Bells {
    mine: OwnedFd,
    peer: OwnedFd,
}

/// Builds one end: it produces into ring `produce` (0: client to server, 1: server to client)
/// and consumes the other.
fn make_end(
    socket: UnixStream,
    map: Mapping,
    capacity: usize,
    produce: usize,
    bells: Bells,
    peer: Peer,
    options: &ShmOptions,
) -> Result<Link, TransportError> {
    let max_frame = options.max_frame_size;
    let Bells {
        mine: my_bell,
        peer: peer_bell,
    } = bells;
    let map = Arc::new(map);
    let ring = |i: usize| {
        // SAFETY: ring `i` of two starts at i * (HEADER + capacity) within the mapping, which
        // is 2 * (HEADER + capacity) bytes long (checked by the caller) and page-aligned.
        unsafe { map.base().add(i * (HEADER + capacity)) }
    };
    // SAFETY: each ring is HEADER + capacity bytes of the mapping, 64-aligned (HEADER and the
    // capacity are multiples of 64), kept mapped by the `Arc<Mapping>` held in `End` and the
    // receiving task for as long as the producer and consumer live; this process is the only
    // producer of one ring and the only consumer of the other.
    let (producer, consumer) = unsafe {
        (
            Producer::new(ring(produce), capacity),
            Consumer::new(ring(1 - produce), capacity, max_frame),
        )
    };
    let producer = producer.map_err(|e| TransportError::Other(e.to_string()))?;
    let consumer = consumer.map_err(|e| TransportError::Other(e.to_string()))?;
    // SAFETY: `my_bell` is an open eventfd that the AsyncFd owns from here on, so it stays open
    // and refers to the same file until the AsyncFd is dropped; OwnedFd::as_raw_fd always
    // returns that same descriptor.
    let bell = unsafe { AsyncFd::register_with_interest(my_bell, Interest::READABLE) }
        .map_err(|e| io_error("eventfd", e.into()))?;
    let end = Arc::new(End {
        map,
        producer: tokio::sync::Mutex::new(producer),
        peer_bell,
        socket: Arc::new(socket),
    });
    let (tx, frames) = mpsc::channel(QUEUE_DEPTH);
    tokio::spawn(receive(Arc::clone(&end), consumer, bell, tx, options.spin));
    Ok(Link {
        tx: Box::new(Tx(end)),
        rx: Box::new(Rx { frames, max_frame }),
        peer,
    })
}

fn process_peer(socket: &UnixStream) -> Peer {
    match socket.peer_cred() {
        Ok(cred) => Peer::Process {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        },
        Err(_) => Peer::Process {
            uid: u32::MAX,
            gid: u32::MAX,
            pid: 0,
        },
    }
}

/// Accepts shared-memory connections on a Unix socket, for a [`courier::Server`].
#[derive(Debug)]
pub struct ShmListener {
    listener: UnixListener,
    path: PathBuf,
    options: ShmOptions,
}

impl ShmListener {
    /// Listens at `path`. A stale socket file nobody listens on is replaced; a live one is
    /// [`TransportError::AddrInUse`]. The file gets the options' mode (owner only by default)
    /// and is removed when the listener is dropped.
    pub fn bind(path: impl AsRef<Path>, options: ShmOptions) -> Result<Self, TransportError> {
        let path = path.as_ref().to_path_buf();
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(TransportError::AddrInUse(path.display().to_string()));
            }
            let _ = std::fs::remove_file(&path);
        }
        let listener = UnixListener::bind(&path).map_err(|e| io_error("bind", e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(options.mode))
            .map_err(|e| io_error("chmod", e))?;
        Ok(ShmListener {
            listener,
            path,
            options,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn set_up(&self, socket: UnixStream) -> Result<Link, TransportError> {
        let peer = process_peer(&socket);
        let capacity = self.options.ring_capacity;
        let len = segment_len(capacity);
        let memfd = sys::memfd(len).map_err(|e| io_error("memfd", e))?;
        let map = Mapping::new(&memfd, len).map_err(|e| io_error("mmap", e))?;
        let server_bell = sys::eventfd().map_err(|e| io_error("eventfd", e))?;
        let client_bell = sys::eventfd().map_err(|e| io_error("eventfd", e))?;
        let fds = [
            memfd.as_raw_fd(),
            client_bell.as_raw_fd(),
            server_bell.as_raw_fd(),
        ];
        loop {
            socket.writable().await.map_err(|e| io_error("socket", e))?;
            match socket.try_io(Interest::WRITABLE, || {
                sys::send_fds(socket.as_raw_fd(), &fds)
            }) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_error("sending the segment", e)),
            }
        }
        // The client holds its own copies now; ours of the memfd and its doorbell can go.
        drop(memfd);
        make_end(
            socket,
            map,
            capacity,
            1,
            Bells {
                mine: server_bell,
                peer: client_bell,
            },
            peer,
            &self.options,
        )
    }
}

impl Drop for ShmListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl courier::transport::Listener for ShmListener {
    async fn accept(&mut self) -> Result<Link, TransportError> {
        loop {
            let (socket, _) = self
                .listener
                .accept()
                .await
                .map_err(|e| io_error("accept", e))?;
            // One client failing its set-up must not stop the others.
            match self.set_up(socket).await {
                Ok(link) => return Ok(link),
                Err(e) => tracing::warn!(error = %e, "shared-memory set-up failed"),
            }
        }
    }
}

/// Connects to a [`ShmListener`], for [`courier::ClientBuilder::connect`].
#[derive(Debug, Clone)]
pub struct ShmConnector {
    path: PathBuf,
    options: ShmOptions,
}

impl ShmConnector {
    /// A connector for the listener at `path`.
    pub fn new(path: impl AsRef<Path>, options: ShmOptions) -> Self {
        ShmConnector {
            path: path.as_ref().to_path_buf(),
            options,
        }
    }
}

impl courier::transport::Connector for ShmConnector {
    async fn connect(&self) -> Result<Link, TransportError> {
        let socket = UnixStream::connect(&self.path)
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    TransportError::NotFound(format!("shm://{}", self.path.display()))
                }
                _ => io_error("connect", e),
            })?;
        let [memfd, my_bell, peer_bell] = loop {
            socket.readable().await.map_err(|e| io_error("socket", e))?;
            match socket.try_io(Interest::READABLE, || {
                sys::recv_fds::<3>(socket.as_raw_fd())
            }) {
                Ok(fds) => break fds,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(io_error("receiving the segment", e)),
            }
        };
        let len = sys::file_len(&memfd).map_err(|e| io_error("fstat", e))?;
        let capacity = (len / 2).saturating_sub(HEADER);
        if len % 2 != 0 || capacity < 64 || !capacity.is_power_of_two() || len > 1 << 34 {
            return Err(TransportError::Other(format!(
                "the server's segment has an unexpected size of {len} bytes"
            )));
        }
        let map = Mapping::new(&memfd, len).map_err(|e| io_error("mmap", e))?;
        let peer = process_peer(&socket);
        make_end(
            socket,
            map,
            capacity,
            0,
            Bells {
                mine: my_bell,
                peer: peer_bell,
            },
            peer,
            &self.options,
        )
    }
}

//! QUIC with a connection driven on one task: quinn-proto's endpoint and connection run by the
//! task that owns the UDP socket, which also reads and writes the streams. quinn spreads each
//! packet over three tasks (endpoint driver, connection driver, the stream's reader); this is
//! the floor of the design that does not, for the matrix's `--one-task-floor`.
//!
//! An echo server of one connection, and a client whose callers hand their requests to the
//! connection's task over a channel. One datagram per system call (no segmentation offload):
//! meant for small calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use quinn_proto::{ConnectionHandle, DatagramEvent, Dir, Endpoint, Event, StreamEvent, StreamId};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One endpoint with at most one connection, and the streams the task serves on it.
struct Side {
    socket: UdpSocket,
    endpoint: Endpoint,
    conn: Option<(ConnectionHandle, quinn_proto::Connection)>,
    buf: Vec<u8>,
    /// Bytes read so far from each stream being read.
    reading: HashMap<StreamId, Vec<u8>>,
    /// Bytes still to write on each stream, then its FIN.
    writing: HashMap<StreamId, Bytes>,
}

impl Side {
    fn new(socket: UdpSocket, endpoint: Endpoint) -> Side {
        Side {
            socket,
            endpoint,
            conn: None,
            buf: Vec::new(),
            reading: HashMap::new(),
            writing: HashMap::new(),
        }
    }

    fn datagram(&mut self, now: Instant, from: SocketAddr, data: BytesMut) {
        self.buf.clear();
        match self
            .endpoint
            .handle(now, from, None, None, data, &mut self.buf)
        {
            Some(DatagramEvent::ConnectionEvent(_, event)) => {
                if let Some((_, conn)) = &mut self.conn {
                    conn.handle_event(event);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.conn.is_some() {
                    self.endpoint.ignore(incoming);
                } else {
                    self.buf.clear();
                    match self.endpoint.accept(incoming, now, &mut self.buf, None) {
                        Ok(accepted) => self.conn = Some(accepted),
                        Err(e) => {
                            if let Some(t) = e.response {
                                let _ = self.socket.try_send_to(&self.buf[..t.size], t.destination);
                            }
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(t)) => {
                let _ = self.socket.try_send_to(&self.buf[..t.size], t.destination);
            }
            None => {}
        }
    }

    /// Reads every datagram waiting on the socket.
    fn drain(&mut self, now: Instant, first: (usize, SocketAddr), recv: &mut [u8]) {
        let (n, from) = first;
        self.datagram(now, from, BytesMut::from(&recv[..n]));
        while let Ok((n, from)) = self.socket.try_recv_from(recv) {
            self.datagram(now, from, BytesMut::from(&recv[..n]));
        }
    }

    /// Exchanges events between the connection and the endpoint, then sends what is due.
    fn flush(&mut self, now: Instant) {
        let Some((handle, conn)) = &mut self.conn else {
            return;
        };
        while let Some(event) = conn.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(*handle, event) {
                conn.handle_event(event);
            }
        }
        loop {
            self.buf.clear();
            let Some(t) = conn.poll_transmit(now, 1, &mut self.buf) else {
                break;
            };
            // A full socket buffer drops the datagram, and QUIC sends it again.
            let _ = self.socket.try_send_to(&self.buf[..t.size], t.destination);
        }
    }

    /// Reads what stream `id` has; the whole request once its FIN has come.
    fn read(&mut self, id: StreamId) -> Option<Vec<u8>> {
        let (_, conn) = self.conn.as_mut()?;
        let data = self.reading.entry(id).or_default();
        let mut stream = conn.recv_stream(id);
        let mut chunks = stream.read(true).ok()?;
        let mut finished = false;
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) if data.len() + chunk.bytes.len() <= crate::quic::MAX_ECHO => {
                    data.extend_from_slice(&chunk.bytes)
                }
                // Past the largest echo: give the stream up.
                Ok(Some(_)) => {
                    let _ = chunks.finalize();
                    let _ = stream.stop(0u32.into());
                    self.reading.remove(&id);
                    return None;
                }
                Ok(None) => {
                    finished = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = chunks.finalize();
        finished.then(|| self.reading.remove(&id).unwrap_or_default())
    }

    /// Writes what stream `id` still has to send, and its FIN once all is written.
    fn write(&mut self, id: StreamId) {
        let Some((_, conn)) = self.conn.as_mut() else {
            return;
        };
        let Some(mut data) = self.writing.remove(&id) else {
            return;
        };
        let mut stream = conn.send_stream(id);
        while !data.is_empty() {
            match stream.write(&data) {
                Ok(n) => {
                    let _ = data.split_to(n);
                }
                Err(_) => break,
            }
        }
        if data.is_empty() {
            let _ = stream.finish();
        } else {
            self.writing.insert(id, data);
        }
    }

    fn deadline(&mut self) -> Option<tokio::time::Instant> {
        let (_, conn) = self.conn.as_mut()?;
        conn.poll_timeout().map(tokio::time::Instant::from_std)
    }

    fn timeout(&mut self, now: Instant) {
        if let Some((_, conn)) = &mut self.conn {
            conn.handle_timeout(now);
        }
    }

    /// The connection's application events, as (stream, what happened).
    fn events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some((_, conn)) = &mut self.conn {
            while let Some(event) = conn.poll() {
                events.push(event);
            }
        }
        events
    }
}

async fn wait(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Serves echoes on the first connection to `socket`, on this one task.
pub async fn serve(
    socket: std::net::UdpSocket,
    endpoint_config: quinn_proto::EndpointConfig,
    server_config: quinn_proto::ServerConfig,
) -> Result<(), Error> {
    socket.set_nonblocking(true)?;
    let endpoint = Endpoint::new(
        Arc::new(endpoint_config),
        Some(Arc::new(server_config)),
        true,
        None,
    );
    let mut side = Side::new(UdpSocket::from_std(socket)?, endpoint);
    let mut recv = vec![0u8; 65536];
    loop {
        let deadline = side.deadline();
        tokio::select! {
            got = side.socket.recv_from(&mut recv) => side.drain(Instant::now(), got?, &mut recv),
            () = wait(deadline) => side.timeout(Instant::now()),
        }
        let mut readable = Vec::new();
        for event in side.events() {
            if let Event::Stream(StreamEvent::Readable { id }) = event {
                readable.push(id);
            } else if let Event::Stream(StreamEvent::Writable { id }) = event {
                side.write(id);
            }
        }
        if let Some((_, conn)) = &mut side.conn {
            while let Some(id) = conn.streams().accept(Dir::Bi) {
                readable.push(id);
            }
        }
        for id in readable {
            if let Some(request) = side.read(id) {
                side.writing.insert(id, Bytes::from(request));
                side.write(id);
            }
        }
        side.flush(Instant::now());
    }
}

type Request = (Bytes, oneshot::Sender<usize>);

/// A client whose connection runs on a task of its own; callers hand it their requests.
#[derive(Debug, Clone)]
pub struct Client {
    requests: mpsc::UnboundedSender<Request>,
}

impl Client {
    /// Connects to the echo server at `addr`, the connection's task spawned on this runtime.
    pub async fn connect(
        addr: SocketAddr,
        endpoint_config: quinn_proto::EndpointConfig,
        client_config: quinn_proto::ClientConfig,
    ) -> Result<Client, Error> {
        let socket = UdpSocket::bind("0.0.0.0:0").await?;
        let mut endpoint = Endpoint::new(Arc::new(endpoint_config), None, true, None);
        let conn = endpoint.connect(Instant::now(), client_config, addr, "localhost")?;
        let mut side = Side::new(socket, endpoint);
        side.conn = Some(conn);
        let (requests, mut incoming) = mpsc::unbounded_channel::<Request>();
        let (ready_tx, ready) = oneshot::channel();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut waiting: HashMap<StreamId, oneshot::Sender<usize>> = HashMap::new();
            let mut recv = vec![0u8; 65536];
            side.flush(Instant::now());
            loop {
                let deadline = side.deadline();
                tokio::select! {
                    got = side.socket.recv_from(&mut recv) => match got {
                        Ok(got) => side.drain(Instant::now(), got, &mut recv),
                        Err(_) => return,
                    },
                    () = wait(deadline) => side.timeout(Instant::now()),
                    request = incoming.recv() => {
                        let Some((data, reply)) = request else { return };
                        let Some(id) = side.conn.as_mut().and_then(|(_, c)| c.streams().open(Dir::Bi)) else {
                            return;
                        };
                        waiting.insert(id, reply);
                        side.writing.insert(id, data);
                        side.write(id);
                        // Take every request already queued before sending.
                        while let Ok((data, reply)) = incoming.try_recv() {
                            let Some(id) = side.conn.as_mut().and_then(|(_, c)| c.streams().open(Dir::Bi)) else {
                                return;
                            };
                            waiting.insert(id, reply);
                            side.writing.insert(id, data);
                            side.write(id);
                        }
                    }
                }
                for event in side.events() {
                    match event {
                        Event::Connected => {
                            if let Some(tx) = ready_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Event::Stream(StreamEvent::Readable { id }) => {
                            if let Some(reply) = side.read(id) {
                                if let Some(waiter) = waiting.remove(&id) {
                                    let _ = waiter.send(reply.len());
                                }
                            }
                        }
                        Event::Stream(StreamEvent::Writable { id }) => side.write(id),
                        Event::ConnectionLost { .. } => return,
                        _ => {}
                    }
                }
                side.flush(Instant::now());
            }
        });
        ready.await.map_err(|_| "the connection failed")?;
        Ok(Client { requests })
    }

    /// Echoes `data`; returns the echo's length.
    pub async fn echo(&self, data: Bytes) -> Result<usize, Error> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send((data, tx))
            .map_err(|_| "the connection is gone")?;
        Ok(rx.await.map_err(|_| "the call was lost")?)
    }
}

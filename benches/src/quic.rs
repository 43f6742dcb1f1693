//! Courier over QUIC and raw quinn on loopback, set up identically for the benches.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use courier::{CallOptions, Client, Codec, Server};
use courier_cbor::Cbor;
use courier_quic::{
    ClientTls, Congestion, DevCert, QuicConnector, QuicListener, QuicOptions, ServerTls,
};
use serde_bytes::ByteBuf;

/// The largest echo the raw servers and clients take: a bound on what a peer's lengths can
/// make them allocate.
pub const MAX_ECHO: usize = 64 * 1024 * 1024;

/// The service the QUIC benches call.
#[courier::service]
pub trait Echo {
    /// Returns its argument.
    async fn echo(&self, data: ByteBuf) -> ByteBuf;
}

/// The [`Echo`] implementation every bench serves.
#[derive(Debug, Clone, Copy)]
pub struct Echoer;

impl Echo for Echoer {
    async fn echo(&self, data: ByteBuf) -> ByteBuf {
        data
    }
}

/// QUIC options from a comma-separated list of `key=value` levers, on top of the defaults:
/// `payload=BYTES` (largest UDP payload, [`QuicOptions::max_udp_payload`]),
/// `rcvbuf=BYTES` and `sndbuf=BYTES` (UDP socket buffers), `window=BYTES` (stream window),
/// `cc=cubic|newreno|bbr` (congestion controller), `gso=on|off`. Sizes take a `k` or `m`
/// suffix (KiB, MiB). The empty list is the defaults.
pub fn options(spec: &str) -> Result<QuicOptions, String> {
    fn bytes(value: &str) -> Result<usize, String> {
        let (digits, unit) = match value.as_bytes().last() {
            Some(b'k' | b'K') => (&value[..value.len() - 1], 1024),
            Some(b'm' | b'M') => (&value[..value.len() - 1], 1024 * 1024),
            _ => (value, 1),
        };
        digits
            .parse::<usize>()
            .map(|n| n * unit)
            .map_err(|e| format!("{value:?}: {e}"))
    }
    let mut options = QuicOptions::default();
    for lever in spec.split(',').map(str::trim).filter(|l| !l.is_empty()) {
        let (key, value) = lever
            .split_once('=')
            .ok_or_else(|| format!("{lever:?}: expected key=value"))?;
        options = match key {
            "payload" => options.max_udp_payload(
                u16::try_from(bytes(value)?).map_err(|_| format!("payload {value} too large"))?,
            ),
            "rcvbuf" => options.udp_receive_buffer(Some(bytes(value)?)),
            "sndbuf" => options.udp_send_buffer(Some(bytes(value)?)),
            "window" => options.stream_window(
                u32::try_from(bytes(value)?).map_err(|_| format!("window {value} too large"))?,
            ),
            "cc" => options.congestion(match value {
                "cubic" => Congestion::Cubic,
                "newreno" => Congestion::NewReno,
                "bbr" => Congestion::Bbr,
                other => return Err(format!("unknown congestion controller {other:?}")),
            }),
            "gso" => options.segmentation_offload(value == "on"),
            other => return Err(format!("unknown QUIC lever {other:?}")),
        };
    }
    Ok(options)
}

/// A Courier client of [`Echo`] over QUIC on loopback with `codec`, with its server on the same
/// runtime.
pub async fn courier_pair<C: Codec>(
    codec: C,
) -> Result<CourierEcho<C>, Box<dyn std::error::Error>> {
    let cert = DevCert::localhost()?;
    let listener = QuicListener::bind(
        "127.0.0.1:0".parse()?,
        ServerTls::dev(&cert),
        QuicOptions::default(),
    )?;
    let addr = listener.local_addr()?;
    let server = Server::builder(codec.clone())
        .service(EchoServer::new(Echoer))
        .build();
    tokio::spawn(async move { server.serve(listener).await });
    let connector = QuicConnector::new(
        addr,
        "localhost",
        ClientTls::trusting_dev(&cert),
        QuicOptions::default(),
    )?;
    let client = Client::builder(codec).connect(&connector).await?;
    Ok(CourierEcho {
        client,
        options: CallOptions::new(),
    })
}

/// A connected Courier echo client.
#[derive(Debug)]
pub struct CourierEcho<C> {
    client: Client<C>,
    options: CallOptions,
}

impl<C: Codec> CourierEcho<C> {
    /// Echoes `data`, encoded straight from the borrowed slice.
    pub async fn echo(&self, data: &[u8]) -> Result<ByteBuf, courier::RpcError> {
        self.client
            .call(
                &EchoClient::<C>::ECHO,
                (serde_bytes::Bytes::new(data),),
                &self.options,
            )
            .await
    }
}

/// Bytes Courier sends for one echo request carrying `data`: header and encoded arguments.
pub fn courier_request_len(data: &[u8]) -> usize {
    let mut payload = Vec::new();
    let encoded = Cbor::default().encode(&(serde_bytes::Bytes::new(data),), &mut payload);
    courier::wire::HEADER_LEN + encoded.map(|()| payload.len()).unwrap_or(0)
}

/// A raw quinn connection to an echo server: the floor Courier is measured against.
#[derive(Debug)]
pub struct RawEcho {
    conn: quinn::Connection,
    payload: Bytes,
}

/// Connects raw quinn to a raw quinn echo server on loopback, with the same TLS and transport
/// settings as Courier's QUIC transport.
pub async fn raw_pair() -> Result<RawEcho, Box<dyn std::error::Error>> {
    let cert = DevCert::localhost()?;
    let options = QuicOptions::default();
    let endpoint = raw_server(ServerTls::dev(&cert), "127.0.0.1:0".parse()?, &options)?;
    let addr = endpoint.local_addr()?;
    tokio::spawn(serve_raw(endpoint));
    raw_connect(addr, ClientTls::trusting_dev(&cert), &options).await
}

/// A raw quinn server endpoint with Courier's TLS and `options`' transport, endpoint and
/// socket settings, for [`serve_raw`].
pub fn raw_server(
    tls: ServerTls,
    addr: SocketAddr,
    options: &QuicOptions,
) -> Result<quinn::Endpoint, Box<dyn std::error::Error>> {
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls.into_rustls()?)?,
    ));
    server_config.transport_config(Arc::new(options.into_transport()?));
    Ok(quinn::Endpoint::new(
        options.into_endpoint_config()?,
        Some(server_config),
        options.bind_udp(addr)?,
        quinn::default_runtime().ok_or("no tokio runtime")?,
    )?)
}

/// Echoes every bidirectional stream on `endpoint`: reads the request to its end and writes
/// it back.
pub async fn serve_raw(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    if let Ok(data) = recv.read_to_end(MAX_ECHO).await {
                        let _ = send.write_chunk(Bytes::from(data)).await;
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}

/// Echoes on long-lived bidirectional streams: each message is a 4-byte big-endian length and
/// that many bytes, answered the same way on the same stream. The floor of a design that frames
/// calls on one stream instead of opening one per call.
pub async fn serve_raw_streams(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let mut prefix = [0u8; 4];
                    while recv.read_exact(&mut prefix).await.is_ok() {
                        let len = u32::from_be_bytes(prefix) as usize;
                        if len > MAX_ECHO {
                            return;
                        }
                        let mut data = vec![0u8; len];
                        if recv.read_exact(&mut data).await.is_err() {
                            return;
                        }
                        let mut reply = Vec::with_capacity(4 + data.len());
                        reply.extend_from_slice(&prefix);
                        reply.extend_from_slice(&data);
                        if send.write_chunk(Bytes::from(reply)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
}

/// One long-lived stream to a [`serve_raw_streams`] server; echoes take turns on it.
#[derive(Debug)]
pub struct RawStream {
    stream: tokio::sync::Mutex<(quinn::SendStream, quinn::RecvStream)>,
    _conn: RawEcho,
}

impl RawStream {
    /// Opens the stream on `conn`.
    pub async fn open(
        conn: RawEcho,
    ) -> Result<RawStream, Box<dyn std::error::Error + Send + Sync>> {
        let stream = conn.conn.open_bi().await?;
        Ok(RawStream {
            stream: tokio::sync::Mutex::new(stream),
            _conn: conn,
        })
    }

    /// Sends `data` framed by its length and reads the echo; returns its length.
    pub async fn echo(
        &self,
        data: Bytes,
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let mut guard = self.stream.lock().await;
        let (send, recv) = &mut *guard;
        let len = u32::try_from(data.len())?.to_be_bytes();
        send.write_chunks(&mut [Bytes::copy_from_slice(&len), data])
            .await?;
        let mut back = [0u8; 4];
        recv.read_exact(&mut back).await?;
        let len = u32::from_be_bytes(back) as usize;
        if len > MAX_ECHO {
            return Err(format!("an echo of {len} bytes, over {MAX_ECHO}").into());
        }
        let mut reply = vec![0u8; len];
        recv.read_exact(&mut reply).await?;
        Ok(reply.len())
    }
}

/// Connects raw quinn to the echo server at `addr` with `options`' settings.
pub async fn raw_connect(
    addr: SocketAddr,
    tls: ClientTls,
    options: &QuicOptions,
) -> Result<RawEcho, Box<dyn std::error::Error>> {
    let mut client_config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls.into_rustls()?)?,
    ));
    client_config.transport_config(Arc::new(options.into_transport()?));
    let local = SocketAddr::new(
        if addr.is_ipv6() {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        },
        0,
    );
    let client = quinn::Endpoint::new(
        options.into_endpoint_config()?,
        None,
        options.bind_udp(local)?,
        quinn::default_runtime().ok_or("no tokio runtime")?,
    )?;
    let conn = client
        .connect_with(client_config, addr, "localhost")?
        .await?;
    Ok(RawEcho {
        conn,
        payload: Bytes::from(vec![0x5au8; 2 * 1024 * 1024]),
    })
}

impl RawEcho {
    /// Sends `len` bytes on a new stream and reads the echo to its end; returns its length
    /// (0 if the exchange failed).
    pub async fn round_trip(&self, len: usize) -> usize {
        let data = self.payload.slice(..len.min(self.payload.len()));
        self.echo(data).await.unwrap_or(0)
    }

    /// Sends `data` on a new stream, finishes it, and reads the echo to its end; returns the
    /// echo's length.
    pub async fn echo(
        &self,
        data: Bytes,
    ) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
        let (mut send, mut recv) = self.conn.open_bi().await?;
        send.write_chunk(data).await?;
        send.finish()?;
        Ok(recv.read_to_end(MAX_ECHO).await?.len())
    }
}

//! Courier over QUIC and raw quinn on loopback, set up identically for the benches.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use courier::{CallOptions, Client, Codec, Server};
use courier_cbor::Cbor;
use courier_quic::{ClientTls, DevCert, QuicConnector, QuicListener, QuicOptions, ServerTls};
use serde_bytes::ByteBuf;

/// The service the QUIC benches call.
#[courier::service]
pub trait Echo {
    /// Returns its argument.
    async fn echo(&self, data: ByteBuf) -> ByteBuf;
}

struct Echoer;

impl Echo for Echoer {
    async fn echo(&self, data: ByteBuf) -> ByteBuf {
        data
    }
}

/// A Courier client of [`Echo`] over QUIC on loopback, with its server on the same runtime.
pub async fn courier_pair() -> Result<CourierEcho, Box<dyn std::error::Error>> {
    let cert = DevCert::localhost()?;
    let listener = QuicListener::bind(
        "127.0.0.1:0".parse()?,
        ServerTls::dev(&cert),
        QuicOptions::default(),
    )?;
    let addr = listener.local_addr()?;
    let server = Server::builder(Cbor::default())
        .service(EchoServer::new(Echoer))
        .build();
    tokio::spawn(async move { server.serve(listener).await });
    let connector = QuicConnector::new(
        addr,
        "localhost",
        ClientTls::trusting_dev(&cert),
        QuicOptions::default(),
    )?;
    let client = Client::builder(Cbor::default()).connect(&connector).await?;
    Ok(CourierEcho {
        client,
        options: CallOptions::new(),
    })
}

/// A connected Courier echo client.
#[derive(Debug)]
pub struct CourierEcho {
    client: Client<Cbor>,
    options: CallOptions,
}

impl CourierEcho {
    /// Echoes `data`, encoded straight from the borrowed slice.
    pub async fn echo(&self, data: &[u8]) -> Result<ByteBuf, courier::RpcError> {
        self.client
            .call(
                &EchoClient::<Cbor>::ECHO,
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
    let server_crypto = ServerTls::dev(&cert).into_rustls()?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_crypto)?,
    ));
    server_config.transport_config(Arc::new(QuicOptions::default().into_transport()?));
    let endpoint = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let addr: SocketAddr = endpoint.local_addr()?;
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if let Ok(data) = recv.read_to_end(64 * 1024 * 1024).await {
                            let _ = send.write_chunk(Bytes::from(data)).await;
                            let _ = send.finish();
                        }
                    });
                }
            });
        }
    });
    let client_crypto = ClientTls::trusting_dev(&cert).into_rustls()?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_crypto)?,
    ));
    client_config.transport_config(Arc::new(QuicOptions::default().into_transport()?));
    let client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let conn = client
        .connect_with(client_config, addr, "localhost")?
        .await?;
    Ok(RawEcho {
        conn,
        payload: Bytes::from(vec![0x5au8; 2 * 1024 * 1024]),
    })
}

impl RawEcho {
    /// Sends `len` bytes on a new stream and reads the echo to its end; returns its length.
    pub async fn round_trip(&self, len: usize) -> usize {
        let Ok((mut send, mut recv)) = self.conn.open_bi().await else {
            return 0;
        };
        let _ = send
            .write_chunk(self.payload.slice(..len.min(self.payload.len())))
            .await;
        let _ = send.finish();
        recv.read_to_end(64 * 1024 * 1024)
            .await
            .map(|v| v.len())
            .unwrap_or(0)
    }
}

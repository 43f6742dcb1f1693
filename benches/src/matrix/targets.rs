//! The servers (each in a child process but the in-process one) and the clients that call
//! them: Courier with each codec over each transport, the floors and the tarpc peer.
//!
//! A child is this same program started again with [`ROLE`] set; it prints `READY <address>`
//! on stdout once it serves, and dies with its parent.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use courier::transport::{mem, Connector, Link};
use courier::{CallOptions, Client, Codec, Server};
use courier_cbor::Cbor;
use courier_quic::{ClientTls, DevCert, QuicConnector, QuicListener, QuicOptions, ServerTls};
use courier_shm::{ShmConnector, ShmListener, ShmOptions};
use courier_tcp::{TcpConnector, TcpListener, TcpOptions};
use courier_xdr::Xdr;
use futures::{FutureExt, StreamExt};
use serde_bytes::ByteBuf;
use tarpc::tokio_serde::formats::Bincode;

use super::measure::Target;
use super::{CodecName, Error, ShmMode};
use crate::quic::{self, EchoClient, EchoServer, Echoer};
use crate::spin::{Bells, SpinSegment, Waiting};

/// The environment variable that starts this program as a child server.
pub(crate) const ROLE: &str = "COURIER_MATRIX_ROLE";
const ARG: &str = "COURIER_MATRIX_ARG";
/// The QUIC levers of the run (`--quic`), for the children.
const QUIC_ENV: &str = "COURIER_MATRIX_QUIC";
/// The address the network servers bind to, for the children.
const HOST_ENV: &str = "COURIER_MATRIX_HOST";

/// Where and how the network rows run: the same in the parent and in every child.
#[derive(Debug, Clone)]
pub(crate) struct Net {
    /// The `--quic` levers, as given.
    pub(crate) quic_spec: String,
    /// The address the network servers bind to: loopback, or the far end of a veth pair.
    pub(crate) host: std::net::IpAddr,
    /// The network namespace the network servers run in, if not this process's.
    pub(crate) netns: Option<String>,
}

static NET: std::sync::OnceLock<Net> = std::sync::OnceLock::new();

/// Sets the run's network settings; call once, before any child starts.
pub(crate) fn set_net(net: Net) -> Result<(), Error> {
    crate::quic::options(&net.quic_spec)?;
    NET.set(net)
        .map_err(|_| "network settings already set".into())
}

fn net() -> Net {
    NET.get_or_init(|| Net {
        quic_spec: std::env::var(QUIC_ENV).unwrap_or_default(),
        host: std::env::var(HOST_ENV)
            .ok()
            .and_then(|h| h.parse().ok())
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
        netns: None,
    })
    .clone()
}

/// The run's QUIC options (the defaults, changed by `--quic`).
fn quic_options() -> Result<QuicOptions, Error> {
    Ok(crate::quic::options(&net().quic_spec)?)
}

/// The address a network server binds to: the run's host, any port.
fn server_addr() -> SocketAddr {
    SocketAddr::new(net().host, 0)
}

/// Roles that serve over the network, run in the servers' namespace when there is one.
const NETWORK_ROLES: [&str; 8] = [
    "courier-quic",
    "raw-quinn",
    "onetask-quinn",
    "raw-quinn-stream",
    "tarpc-tcp",
    "courier-tcp",
    "tarpc-tls",
    "tonic-tls",
];

/// The largest payload any row sends.
pub(crate) const MAX_PAYLOAD: usize = 1024 * 1024;

/// The same echo service, declared for tarpc.
#[tarpc::service]
pub trait TarpcEcho {
    /// Returns its argument.
    async fn echo(data: ByteBuf) -> ByteBuf;
}

#[derive(Clone)]
struct TarpcEchoer;

/// The same echo service, declared in protobuf for tonic (`proto/echo.proto`).
pub(crate) mod grpc {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("courier.bench");
}

/// tonic's echo server: hands the request's bytes back.
struct TonicEchoer;

#[tonic::async_trait]
impl grpc::echo_server::Echo for TonicEchoer {
    async fn echo(
        &self,
        request: tonic::Request<grpc::Blob>,
    ) -> Result<tonic::Response<grpc::Blob>, tonic::Status> {
        Ok(tonic::Response::new(request.into_inner()))
    }
}

impl TarpcEcho for TarpcEchoer {
    async fn echo(self, _: tarpc::context::Context, data: ByteBuf) -> ByteBuf {
        data
    }
}

/// A per-run directory for the development certificate and the Unix sockets.
#[derive(Debug)]
pub(crate) struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub(crate) fn new() -> Result<Scratch, Error> {
        let dir = std::env::temp_dir().join(format!("courier-matrix-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let cert = DevCert::localhost()?;
        std::fs::write(dir.join("cert.pem"), cert.certificate_pem())?;
        std::fs::write(dir.join("key.pem"), cert.private_key_pem())?;
        Ok(Scratch { dir })
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child server, killed when dropped.
#[derive(Debug)]
pub(crate) struct ChildServer {
    child: Child,
    /// What the child printed after `READY`: its address, if it has one.
    pub(crate) address: String,
}

impl ChildServer {
    pub(crate) fn spawn(role: &str, arg: &str) -> Result<ChildServer, Error> {
        let net = net();
        let exe = std::env::current_exe()?;
        let mut command = match &net.netns {
            Some(ns) if NETWORK_ROLES.contains(&role) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(exe);
                command
            }
            _ => Command::new(exe),
        };
        let mut child = command
            .env(ROLE, role)
            .env(QUIC_ENV, &net.quic_spec)
            .env(HOST_ENV, net.host.to_string())
            .env(ARG, arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("child has no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(address) = line.trim_end().strip_prefix("READY") else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the {role} server did not start").into());
        };
        Ok(ChildServer {
            address: address.trim().to_owned(),
            child,
        })
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ready(address: impl std::fmt::Display) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY {address}")?;
    out.flush()?;
    Ok(())
}

/// Runs the child role named in the environment, if there is one: `None` for the parent.
pub(crate) fn child_role() -> Option<Result<(), Error>> {
    let role = std::env::var(ROLE).ok()?;
    // Die with the parent, so an interrupted run leaves no servers behind.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and changes only this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let arg = std::env::var(ARG).unwrap_or_default();
    Some(serve(&role, &arg))
}

fn serve(role: &str, arg: &str) -> Result<(), Error> {
    let dir = Path::new(arg);
    match role {
        "raw-spin" | "raw-futex" | "raw-eventfd" => {
            let mut fds = arg.split(',').map(str::parse::<i32>);
            let fd = fds.next().ok_or("no descriptor")??;
            let how = match role {
                "raw-futex" => Waiting::Futex,
                "raw-eventfd" => {
                    let mut next = || fds.next().ok_or("raw-eventfd: two eventfds expected");
                    Waiting::Bells(Bells {
                        mine: next()??,
                        theirs: next()??,
                    })
                }
                _ => Waiting::Spin,
            };
            // SAFETY: the parent created this memfd with `SpinSegment::create(MAX_PAYLOAD)` and
            // left it (and the eventfds, if any) open across exec.
            let segment = unsafe { SpinSegment::map(fd, MAX_PAYLOAD)? };
            ready("")?;
            segment.pong(how);
            Ok(())
        }
        "courier-shm" => crate::runtime()?.block_on(async {
            // One listener per wait mode, each waiting as its clients do.
            let mut serving = Vec::new();
            for mode in ShmMode::ALL {
                let options = ShmOptions::default().wait(mode.wait());
                let listener = ShmListener::bind(dir.join(mode.socket()), options)?;
                serving.push(tokio::spawn(async move {
                    courier_server().serve(listener).await
                }));
            }
            ready("")?;
            for serving in serving {
                serving.await??;
            }
            Ok(())
        }),
        "courier-quic" => crate::runtime()?.block_on(async {
            let tls = ServerTls::from_pem_files(dir.join("cert.pem"), dir.join("key.pem"))?;
            let listener = QuicListener::bind(server_addr(), tls, quic_options()?)?;
            ready(listener.local_addr()?)?;
            courier_server().serve(listener).await?;
            Ok(())
        }),
        "raw-quinn" => crate::runtime()?.block_on(async {
            let tls = ServerTls::from_pem_files(dir.join("cert.pem"), dir.join("key.pem"))?;
            let endpoint = quic::raw_server(tls, server_addr(), &quic_options()?)
                .map_err(|e| e.to_string())?;
            ready(endpoint.local_addr()?)?;
            quic::serve_raw(endpoint).await;
            Ok(())
        }),
        "onetask-quinn" => crate::runtime()?.block_on(async {
            let tls = ServerTls::from_pem_files(dir.join("cert.pem"), dir.join("key.pem"))?;
            let options = quic_options()?;
            let mut config = quinn::ServerConfig::with_crypto(Arc::new(
                quinn::crypto::rustls::QuicServerConfig::try_from(tls.into_rustls()?)?,
            ));
            config.transport_config(Arc::new(options.into_transport()?));
            let socket = options.bind_udp(server_addr())?;
            ready(socket.local_addr()?)?;
            crate::onetask::serve(socket, options.into_endpoint_config()?, config).await
        }),
        "raw-quinn-stream" => crate::runtime()?.block_on(async {
            let tls = ServerTls::from_pem_files(dir.join("cert.pem"), dir.join("key.pem"))?;
            let endpoint = quic::raw_server(tls, server_addr(), &quic_options()?)
                .map_err(|e| e.to_string())?;
            ready(endpoint.local_addr()?)?;
            quic::serve_raw_streams(endpoint).await;
            Ok(())
        }),
        "tarpc-tcp" => crate::runtime()?.block_on(async {
            let listener =
                tarpc::serde_transport::tcp::listen(server_addr(), Bincode::default).await?;
            ready(listener.local_addr())?;
            serve_tarpc(listener).await;
            Ok(())
        }),
        "courier-tcp" => crate::runtime()?.block_on(async {
            let tls = ServerTls::from_pem_files(dir.join("cert.pem"), dir.join("key.pem"))?;
            let listener = TcpListener::bind(server_addr(), tls, TcpOptions::default())?;
            ready(listener.local_addr()?)?;
            courier_server().serve(listener).await?;
            Ok(())
        }),
        "tarpc-tls" => crate::runtime()?.block_on(async {
            let tls = ServerTls::from_pem_files(dir.join("cert.pem"), dir.join("key.pem"))?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls.into_rustls()?));
            let listener = tokio::net::TcpListener::bind(server_addr()).await?;
            ready(listener.local_addr()?)?;
            // Handshakes one after another: the matrix opens one connection.
            let incoming = futures::stream::unfold(listener, move |listener| {
                let acceptor = acceptor.clone();
                async move {
                    let accepted = async {
                        let (tcp, _) = listener.accept().await?;
                        tcp.set_nodelay(true)?;
                        let tls = acceptor.accept(tcp).await?;
                        Ok::<_, std::io::Error>(tarpc::serde_transport::new(
                            framed(tls),
                            Bincode::default(),
                        ))
                    };
                    Some((accepted.await, listener))
                }
            });
            serve_tarpc(incoming).await;
            Ok(())
        }),
        "tonic-tls" => crate::runtime()?.block_on(async {
            let identity = tonic::transport::Identity::from_pem(
                std::fs::read(dir.join("cert.pem"))?,
                std::fs::read(dir.join("key.pem"))?,
            );
            let listener = tokio::net::TcpListener::bind(server_addr()).await?;
            ready(listener.local_addr()?)?;
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?
                .add_service(grpc::echo_server::EchoServer::new(TonicEchoer))
                .serve_with_incoming(incoming)
                .await?;
            Ok(())
        }),
        "tarpc-unix" => crate::runtime()?.block_on(async {
            let listener =
                tarpc::serde_transport::unix::listen(dir.join("tarpc.sock"), Bincode::default)
                    .await?;
            ready("")?;
            serve_tarpc(listener).await;
            Ok(())
        }),
        other => Err(format!("unknown role {other:?}").into()),
    }
}

/// Serves tarpc the way its documentation does: one task per connection, one per request.
async fn serve_tarpc<T, E>(incoming: impl futures::Stream<Item = Result<T, E>>)
where
    T: tarpc::Transport<tarpc::Response<TarpcEchoResponse>, tarpc::ClientMessage<TarpcEchoRequest>>
        + Send
        + 'static,
{
    use tarpc::server::{BaseChannel, Channel};
    incoming
        .filter_map(|conn| futures::future::ready(conn.ok()))
        .for_each(|transport| async move {
            let channel = BaseChannel::with_defaults(transport);
            tokio::spawn(
                channel
                    .execute(TarpcEchoer.serve())
                    .for_each(|reply| async {
                        tokio::spawn(reply);
                    }),
            );
        })
        .await;
}

fn courier_server() -> Server<(Cbor, Xdr)> {
    Server::builder((Cbor::default(), Xdr::default()))
        .service(EchoServer::new(Echoer))
        .build()
}

/// Calls `echo` through a Courier client, the argument encoded from the borrowed bytes.
fn courier_target<C: Codec>(client: Client<C>) -> Target {
    let options = CallOptions::new().timeout(std::time::Duration::from_secs(60));
    Target::new(move |data: Bytes| {
        let (client, options) = (client.clone(), options.clone());
        async move {
            let reply: ByteBuf = client
                .call(
                    &EchoClient::<C>::ECHO,
                    (serde_bytes::Bytes::new(&data),),
                    &options,
                )
                .await?;
            Ok(reply.len())
        }
        .boxed()
    })
}

/// Starts a Courier client with `codec` on `link` and wraps it as a target.
async fn courier_client(codec: CodecName, link: Link) -> Result<Target, Error> {
    Ok(match codec {
        CodecName::Cbor => {
            courier_target(Client::builder(Cbor::default()).connect_link(link).await?)
        }
        CodecName::Xdr => courier_target(Client::builder(Xdr::default()).connect_link(link).await?),
    })
}

/// Courier in process: the server runs on the caller's runtime.
pub(crate) async fn courier_mem(codec: CodecName) -> Result<Target, Error> {
    let (client_end, server_end) = mem::pair();
    tokio::spawn(async move { courier_server().serve_link(server_end).await });
    courier_client(codec, client_end).await
}

/// Courier over shared memory to the `courier-shm` child's socket at `path`, waiting as
/// `mode` says.
pub(crate) async fn courier_shm(
    codec: CodecName,
    path: PathBuf,
    mode: ShmMode,
) -> Result<Target, Error> {
    let connector = ShmConnector::new(path, ShmOptions::default().wait(mode.wait()));
    courier_client(codec, connector.connect().await?).await
}

/// Courier over QUIC to the `courier-quic` child at `addr`.
pub(crate) async fn courier_quic(
    codec: CodecName,
    scratch: &Scratch,
    addr: SocketAddr,
) -> Result<Target, Error> {
    let tls = ClientTls::from_pem_file(scratch.path("cert.pem"))?;
    let connector = QuicConnector::new(addr, "localhost", tls, quic_options()?)?;
    courier_client(codec, connector.connect().await?).await
}

/// Raw quinn to the `raw-quinn` child at `addr`: one stream per echo.
pub(crate) async fn raw_quinn(scratch: &Scratch, addr: SocketAddr) -> Result<Target, Error> {
    let tls = ClientTls::from_pem_file(scratch.path("cert.pem"))?;
    let raw = quic::raw_connect(addr, tls, &quic_options()?)
        .await
        .map_err(|e| e.to_string())?;
    let raw = Arc::new(raw);
    Ok(Target::new(move |data: Bytes| {
        let raw = raw.clone();
        async move { raw.echo(data).await }.boxed()
    }))
}

/// Raw quinn to the `raw-quinn-stream` child at `addr`: echoes take turns on one long-lived
/// stream, so its 64-in-flight figure is one call at a time.
pub(crate) async fn raw_quinn_stream(scratch: &Scratch, addr: SocketAddr) -> Result<Target, Error> {
    let tls = ClientTls::from_pem_file(scratch.path("cert.pem"))?;
    let conn = quic::raw_connect(addr, tls, &quic_options()?)
        .await
        .map_err(|e| e.to_string())?;
    let stream = Arc::new(quic::RawStream::open(conn).await?);
    Ok(Target::new(move |data: Bytes| {
        let stream = stream.clone();
        async move { stream.echo(data).await }.boxed()
    }))
}

/// quinn-proto driven on one task, to the `onetask-quinn` child at `addr`.
pub(crate) async fn onetask_quinn(scratch: &Scratch, addr: SocketAddr) -> Result<Target, Error> {
    let tls = ClientTls::from_pem_file(scratch.path("cert.pem"))?;
    let options = quic_options()?;
    let mut config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls.into_rustls()?)?,
    ));
    config.transport_config(Arc::new(options.into_transport()?));
    let client =
        crate::onetask::Client::connect(addr, options.into_endpoint_config()?, config).await?;
    Ok(Target::new(move |data: Bytes| {
        let client = client.clone();
        async move { client.echo(data).await }.boxed()
    }))
}

/// tarpc with its bincode transport over TCP to the `tarpc-tcp` child at `addr`.
pub(crate) async fn tarpc_tcp(addr: SocketAddr) -> Result<Target, Error> {
    let transport = tarpc::serde_transport::tcp::connect(addr, Bincode::default).await?;
    Ok(tarpc_target(transport))
}

/// tarpc with its bincode transport over TLS 1.3 on TCP to the `tarpc-tls` child at `addr`:
/// rustls with ring, the run's development certificate, as Courier's TLS rows have.
pub(crate) async fn tarpc_tls(scratch: &Scratch, addr: SocketAddr) -> Result<Target, Error> {
    let tls = ClientTls::from_pem_file(scratch.path("cert.pem"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls.into_rustls()?));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let stream = connector.connect(name, tcp).await?;
    let transport = tarpc::serde_transport::new(framed(stream), Bincode::default());
    Ok(tarpc_target(transport))
}

/// tonic unary calls over HTTP/2 with TLS 1.3 (rustls with ring, as tonic's `tls-ring`
/// feature sets it up) to the `tonic-tls` child at `addr`, trusting the run's development
/// certificate; tonic's defaults otherwise, as a user would have them.
pub(crate) async fn tonic_tls(scratch: &Scratch, addr: SocketAddr) -> Result<Target, Error> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
            scratch.path("cert.pem"),
        )?))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let client = grpc::echo_client::EchoClient::new(channel);
    Ok(Target::new(move |data: Bytes| {
        let mut client = client.clone();
        async move {
            let reply = client.echo(grpc::Blob { data }).await?;
            Ok(reply.into_inner().data.len())
        }
        .boxed()
    }))
}

/// A byte stream framed as tarpc's TCP transport frames it (a length before each message),
/// with room for the largest payload.
fn framed<S: tokio::io::AsyncRead + tokio::io::AsyncWrite>(
    stream: S,
) -> tarpc::tokio_util::codec::Framed<S, tarpc::tokio_util::codec::LengthDelimitedCodec> {
    tarpc::tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(4 * MAX_PAYLOAD)
        .new_framed(stream)
}

/// Courier over TLS on TCP to the `courier-tcp` child at `addr`.
pub(crate) async fn courier_tcp(
    codec: CodecName,
    scratch: &Scratch,
    addr: SocketAddr,
) -> Result<Target, Error> {
    let tls = ClientTls::from_pem_file(scratch.path("cert.pem"))?;
    let connector = TcpConnector::new(addr, "localhost", tls, TcpOptions::default())?;
    courier_client(codec, connector.connect().await?).await
}

/// tarpc with its bincode transport over the Unix socket of the `tarpc-unix` child.
pub(crate) async fn tarpc_unix(scratch: &Scratch) -> Result<Target, Error> {
    let transport =
        tarpc::serde_transport::unix::connect(scratch.path("tarpc.sock"), Bincode::default).await?;
    Ok(tarpc_target(transport))
}

fn tarpc_target<T>(transport: T) -> Target
where
    T: tarpc::Transport<tarpc::ClientMessage<TarpcEchoRequest>, tarpc::Response<TarpcEchoResponse>>
        + Send
        + 'static,
{
    let client = TarpcEchoClient::new(tarpc::client::Config::default(), transport).spawn();
    Target::new(move |data: Bytes| {
        let client = client.clone();
        async move {
            // tarpc's arguments are owned: the bytes are copied into the request here.
            let reply = client
                .echo(tarpc::context::current(), ByteBuf::from(data.to_vec()))
                .await?;
            Ok(reply.len())
        }
        .boxed()
    })
}

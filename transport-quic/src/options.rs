//! The settings of QUIC listeners and connectors: [`QuicOptions`], and how they become quinn's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::Error;

/// MTU discovery's default upper bound. Loopback and jumbo-frame paths reach it, Ethernet's
/// 1,500-byte paths stop at their MTU; measured in `benches/RESULTS.md` ("QUIC levers").
const DEFAULT_MAX_UDP_PAYLOAD: u16 = 6500;
/// The largest packet that keeps a batch of segmentation offload within what the kernel takes.
/// quinn 0.11 hands the kernel up to ten packets per system call, and the kernel refuses a
/// batch of more than 65,527 bytes: all ten packets are lost, over and over, and MTU discovery
/// falls back to 1,200 bytes (quinn-rs/quinn#2201). Ten of these fit.
const GSO_MAX_UDP_PAYLOAD: u16 = 6552;
/// The default UDP socket buffers asked of the kernel: room for a few windows of packets
/// that arrive while the endpoint's task is not reading.
const DEFAULT_UDP_BUFFER: usize = 4 << 20;
/// quinn's default stream window: 100 Mbit/s at a 100 ms round trip.
const DEFAULT_STREAM_WINDOW: u32 = 1_250_000;

/// A congestion controller for [`QuicOptions::congestion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Congestion {
    /// CUBIC (RFC 9438), as TCP on Linux: the default.
    #[default]
    Cubic,
    /// NewReno (RFC 9002's example controller).
    NewReno,
    /// BBR, model-based; quinn marks its implementation experimental.
    Bbr,
}

/// Transport settings shared by listeners and connectors. Each has a documented default.
#[derive(Debug, Clone)]
pub struct QuicOptions {
    idle_timeout: Duration,
    keep_alive: Option<Duration>,
    max_concurrent_calls: u32,
    max_frame_size: usize,
    receive_budget: usize,
    receive_ceiling: usize,
    frame_timeout: Duration,
    udp_receive_buffer: Option<usize>,
    udp_send_buffer: Option<usize>,
    max_udp_payload: u16,
    stream_window: u32,
    congestion: Congestion,
    segmentation_offload: bool,
}

impl Default for QuicOptions {
    fn default() -> Self {
        QuicOptions {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(10)),
            max_concurrent_calls: 1024,
            max_frame_size: courier::Limits::default().frame_size_limit(),
            receive_budget: 64 * 1024 * 1024,
            receive_ceiling: 1 << 30,
            frame_timeout: Duration::from_secs(30),
            udp_receive_buffer: Some(DEFAULT_UDP_BUFFER),
            udp_send_buffer: Some(DEFAULT_UDP_BUFFER),
            max_udp_payload: DEFAULT_MAX_UDP_PAYLOAD,
            stream_window: DEFAULT_STREAM_WINDOW,
            congestion: Congestion::Cubic,
            segmentation_offload: true,
        }
    }
}

impl QuicOptions {
    /// How long a silent connection lives. A peer that vanishes without closing (a crash, a
    /// cable pulled) is declared lost after this. Default: 30 s.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How often to send keep-alives on a quiet connection, so the idle timeout only fires when
    /// the peer is really gone; `None` to send none. Default: every 10 s.
    pub fn keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive = interval;
        self
    }

    /// How many calls the peer may have open at once on one connection (QUIC streams);
    /// further calls wait for a stream. Default: 1024.
    pub fn max_concurrent_calls(mut self, calls: u32) -> Self {
        self.max_concurrent_calls = calls.max(1);
        self
    }

    /// Largest frame read from the peer; a larger one is refused with
    /// [`RpcError::FrameTooLarge`](courier::RpcError::FrameTooLarge) for its call only.
    /// Default: the same as [`courier::Limits`].
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes.max(courier::wire::HEADER_LEN);
        self
    }

    /// Bytes of received frames one connection may hold before its readers wait (and QUIC
    /// flow control pushes back on the peer). A frame larger than 4 KiB is counted whole when
    /// its header arrives, so frames in progress never hold the budget between them while
    /// each waits for more; a peer whose headers lie holds up only its own calls, for at most
    /// the frame timeout. Never less than the frame size limit. Default: 64 MiB.
    pub fn receive_budget(mut self, bytes: usize) -> Self {
        self.receive_budget = bytes;
        self
    }

    /// Bytes of received frames all the connections of one listener may hold together: the
    /// listener's ceiling on what its peers can make it keep in memory, whatever their number.
    /// Frames are counted against it as their bytes arrive, never on a header's word, so no
    /// peer can take it with headers alone. Readers past it wait, as they do past their
    /// connection's budget. Never less than the
    /// frame size limit. Listeners only. Default: 1 GiB.
    pub fn receive_ceiling(mut self, bytes: usize) -> Self {
        self.receive_ceiling = bytes;
        self
    }

    /// How long one frame may take to arrive once its first byte has: a frame still
    /// incomplete after that is dropped with the memory it held, the stream is stopped, and
    /// the call fails with a protocol error. Protects against peers that announce large frames
    /// and send them slowly or never. Default: 30 s.
    pub fn frame_timeout(mut self, timeout: Duration) -> Self {
        self.frame_timeout = timeout;
        self
    }

    /// The size asked of the kernel for the UDP socket's receive buffer, or `None` to keep the
    /// system's default (on Linux `net.core.rmem_default`, often 208 KiB). A packet that
    /// arrives at a full buffer is dropped and QUIC sends it again, at a cost in latency and
    /// throughput: with 208 KiB, 64 calls of 1 MiB lost about 2 % of their packets on
    /// loopback. The kernel caps what it grants at `net.core.rmem_max` (208 KiB on many
    /// systems: raise it with `sysctl -w net.core.rmem_max=4194304` for the default to take
    /// full effect); the size granted is logged at debug level. Default: 4 MiB.
    pub fn udp_receive_buffer(mut self, bytes: Option<usize>) -> Self {
        self.udp_receive_buffer = bytes;
        self
    }

    /// The size asked of the kernel for the UDP socket's send buffer, or `None` to keep the
    /// system's default (`net.core.wmem_default`), capped at `net.core.wmem_max`.
    /// Default: 4 MiB.
    pub fn udp_send_buffer(mut self, bytes: Option<usize>) -> Self {
        self.udp_send_buffer = bytes;
        self
    }

    /// The largest UDP payload this endpoint sends and accepts, in bytes (1,200 to 65,527).
    ///
    /// Packets start at 1,200 bytes; path MTU discovery then probes upward as far as this
    /// bound and the peer's own, and falls back if a probe is lost, so a bound above the
    /// path's MTU is safe and costs only a few lost probes. Larger packets mean fewer packets,
    /// system calls and per-packet costs for the same bytes, on paths that carry them
    /// (loopback, jumbo-frame networks): on loopback, 6,500 doubled the speed of a 1 MiB call
    /// over 1,452. The receive buffer an endpoint keeps grows with it (2,048 times the bound,
    /// reserved but touched only as packets arrive: 13 MB at the default).
    ///
    /// With [segmentation offload](Self::segmentation_offload) on, the bound is held to 6,552:
    /// quinn batches up to ten packets per system call and the kernel refuses batches over
    /// 64 KiB, losing every packet of them. Turn offload off to probe larger packets.
    /// Default: 6,500.
    pub fn max_udp_payload(mut self, bytes: u16) -> Self {
        self.max_udp_payload = bytes.clamp(1200, 65_527);
        self
    }

    /// Bytes of one call's stream the peer may send ahead of what this side has read (QUIC's
    /// stream flow-control window; the send window is eight times it). A window under the
    /// path's bandwidth-delay product caps one large call's speed at window ÷ round trip.
    /// The connection's memory stays bounded by [`receive_budget`](Self::receive_budget).
    /// Default: 1.25 MB (100 Mbit/s at a 100 ms round trip).
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.stream_window = bytes.max(1);
        self
    }

    /// The congestion controller. Default: [`Congestion::Cubic`].
    pub fn congestion(mut self, controller: Congestion) -> Self {
        self.congestion = controller;
        self
    }

    /// Whether to hand the kernel several packets in one system call (UDP generic
    /// segmentation offload) where the system supports it. Default: on.
    pub fn segmentation_offload(mut self, enabled: bool) -> Self {
        self.segmentation_offload = enabled;
        self
    }

    /// The quinn transport configuration these options make, for tools that drive quinn
    /// directly with the same settings.
    pub fn into_transport(&self) -> Result<quinn::TransportConfig, Error> {
        self.transport()
    }

    /// The quinn endpoint configuration these options make (the largest UDP payload), for
    /// tools that drive quinn directly. Listeners add their own reset and connection-id keys.
    pub fn into_endpoint_config(&self) -> Result<quinn::EndpointConfig, Error> {
        let mut config = quinn::EndpointConfig::default();
        self.apply_endpoint(&mut config)?;
        Ok(config)
    }

    /// A UDP socket bound at `addr` with these options' buffer sizes, for
    /// [`quinn::Endpoint::new`].
    pub fn bind_udp(&self, addr: SocketAddr) -> Result<std::net::UdpSocket, Error> {
        let socket = std::net::UdpSocket::bind(addr)?;
        let sock = socket2::SockRef::from(&socket);
        if let Some(bytes) = self.udp_receive_buffer {
            sock.set_recv_buffer_size(bytes)?;
        }
        if let Some(bytes) = self.udp_send_buffer {
            sock.set_send_buffer_size(bytes)?;
        }
        tracing::debug!(
            receive = sock.recv_buffer_size().ok(),
            send = sock.send_buffer_size().ok(),
            "UDP socket buffers"
        );
        Ok(socket)
    }

    pub(crate) fn apply_endpoint(&self, config: &mut quinn::EndpointConfig) -> Result<(), Error> {
        // The payload this side accepts; the transport parameter tells the peer, whose MTU
        // discovery stops there.
        config
            .max_udp_payload_size(self.max_udp_payload.max(1472))
            .map_err(|e| Error::Config(format!("largest UDP payload: {e}")))?;
        Ok(())
    }

    pub(crate) fn transport(&self) -> Result<quinn::TransportConfig, Error> {
        let mut t = quinn::TransportConfig::default();
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|e| Error::Config(format!("idle timeout: {e}")))?;
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(if self.segmentation_offload {
            self.max_udp_payload.min(GSO_MAX_UDP_PAYLOAD)
        } else {
            self.max_udp_payload
        });
        t.max_idle_timeout(Some(idle))
            .keep_alive_interval(self.keep_alive)
            .max_concurrent_bidi_streams(self.max_concurrent_calls.into())
            .max_concurrent_uni_streams(self.max_concurrent_calls.into())
            .mtu_discovery_config(Some(mtu))
            .stream_receive_window(self.stream_window.into())
            .send_window(8 * u64::from(self.stream_window))
            .enable_segmentation_offload(self.segmentation_offload);
        match self.congestion {
            Congestion::Cubic => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()))
            }
            Congestion::NewReno => t.congestion_controller_factory(Arc::new(
                quinn::congestion::NewRenoConfig::default(),
            )),
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
            }
        };
        Ok(t)
    }
}

/// How a link reads frames: its limits and budgets.
#[derive(Debug, Clone)]
pub(crate) struct ReadLimits {
    pub(crate) max_frame: usize,
    pub(crate) frame_timeout: Duration,
    /// Received bytes this connection may hold.
    pub(crate) connection: Arc<Semaphore>,
    /// Received bytes all of a listener's connections may hold; `None` on the connecting side.
    pub(crate) ceiling: Option<Arc<Semaphore>>,
}

impl QuicOptions {
    /// The listener-wide ceiling on received bytes, as semaphore permits.
    pub(crate) fn ceiling_permits(&self) -> usize {
        self.receive_ceiling
            .max(self.max_frame_size)
            .min(Semaphore::MAX_PERMITS)
    }

    pub(crate) fn read_limits(&self, ceiling: Option<Arc<Semaphore>>) -> ReadLimits {
        ReadLimits {
            max_frame: self.max_frame_size,
            frame_timeout: self.frame_timeout,
            connection: Arc::new(Semaphore::new(
                self.receive_budget
                    .max(self.max_frame_size)
                    .min(Semaphore::MAX_PERMITS),
            )),
            ceiling,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport(options: QuicOptions) -> String {
        format!("{:?}", options.into_transport().map_err(|e| e.to_string()))
    }

    #[test]
    fn packets_past_a_tenth_of_an_offload_batch_need_offload_off() {
        let large = QuicOptions::default().max_udp_payload(9000);
        assert!(transport(large.clone()).contains("upper_bound: 6552"));
        assert!(transport(large.segmentation_offload(false)).contains("upper_bound: 9000"));
        assert!(transport(QuicOptions::default()).contains("upper_bound: 6500"));
        // Out of QUIC's range: held to it.
        let tiny = QuicOptions::default().max_udp_payload(100);
        assert!(transport(tiny).contains("upper_bound: 1200"));
    }

    #[test]
    fn the_socket_gets_the_buffers_asked_within_the_kernels_cap() {
        // Below every system's default, so the sizes read back are the ones asked for.
        let options = QuicOptions::default()
            .udp_receive_buffer(Some(48 * 1024))
            .udp_send_buffer(Some(40 * 1024));
        let socket = options
            .bind_udp("127.0.0.1:0".parse().expect("an address"))
            .expect("a socket");
        let sock = socket2::SockRef::from(&socket);
        // Linux doubles what it is asked, for its own bookkeeping.
        assert_eq!(sock.recv_buffer_size().expect("SO_RCVBUF"), 2 * 48 * 1024);
        assert_eq!(sock.send_buffer_size().expect("SO_SNDBUF"), 2 * 40 * 1024);
    }
}

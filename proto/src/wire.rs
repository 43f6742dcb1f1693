//! The wire format: the fixed frame header and the per-connection handshake.
//!
//! The complete protocol, with the QUIC and shared-memory mappings and worked examples checked
//! against this code, is `PROTOCOL.md` at the repository root; this module's tables are its
//! first two sections.
//!
//! Every frame Courier sends is a 32-byte header followed by the codec's payload. The header is
//! big-endian and the same whatever the codec, so a peer can route, cancel and reject a frame
//! without understanding its payload.
//!
//! # Frame header
//!
//! | offset | size | field | notes |
//! |-------:|-----:|-------|-------|
//! | 0  | 1 | protocol version | [`PROTOCOL_VERSION`]; at the same offset in every version |
//! | 1  | 1 | kind | [`FrameKind`]: 1 Call, 2 OneWay, 3 Ack, 4 Reply, 5 Error, 6 Cancel, 7 Release |
//! | 2  | 2 | flags | bit 0: [`Flags::ACK`] (the caller wants an Ack before the method runs); bit 1: [`Flags::IDEMPOTENT`] (at-least-once: no reply cache); bit 2: [`Flags::METADATA`] (Call and OneWay: the payload starts with a metadata block); other bits must be zero |
//! | 4  | 4 | interface id | [`InterfaceId`] of the service called |
//! | 8  | 8 | call id | chosen by the caller, unique for the whole life of its client id and epoch (never reused, not even across links); at the same offset in every version |
//! | 16 | 4 | method id | [`MethodId`] within the interface |
//! | 20 | 2 | interface version | the version of the interface the caller was built against |
//! | 22 | 2 | reserved | must be zero |
//! | 24 | 4 | payload length | bytes after the header; must equal the rest of the frame |
//! | 28 | 4 | deadline budget | microseconds left when the frame was sent; 0 = none. Relative, so clocks need not agree |
//!
//! Replies, errors, acks and cancels echo the call id (and interface and method) of the call they
//! answer. A budget longer than `u32::MAX` µs (about 71 minutes) is sent as 0: the server then
//! enforces no deadline, while the caller still enforces its own.
//!
//! # Metadata block
//!
//! A Call or OneWay frame with [`Flags::METADATA`] starts its payload with key/value pairs
//! ([`Metadata`](crate::metadata::Metadata)); the codec's payload follows the block. Without the flag
//! there is no block, so a call without metadata is byte for byte what it was before metadata
//! existed.
//!
//! | offset | size | field | notes |
//! |-------:|-----:|-------|-------|
//! | 0 | 2 | block length *B* | bytes of the entries that follow; at most `Limits::max_metadata_bytes` (16 KiB by default) |
//! | 2 | *B* | entries | each: key length *k* (1 byte, 1–64), key (*k* bytes of `a-z 0-9 - _ .`), value length *v* (2 bytes), value (*v* bytes, any) |
//!
//! Keys appear at most once; at most `Limits::max_metadata_entries` entries (64 by default). A
//! block that breaks any of this fails its call with a Protocol error (or, for a OneWay, is
//! dropped); the connection goes on.
//!
//! # Error payload
//!
//! An [`FrameKind::Error`] frame carries a codec-independent payload, so that errors raised before
//! any codec is involved (an unknown interface, a malformed frame) can always be reported:
//! a 2-byte big-endian [`ErrorCode`] followed by a UTF-8 message (the rest of the payload). A
//! [`ErrorCode::TooLarge`] error puts the refused frame's size and the limit it broke (each a
//! big-endian `u64`) between the code and the message; see [`ErrorPayload`].
//!
//! # Handshake
//!
//! Before any frame, the connecting side sends a *hello* and the accepting side answers with a
//! *welcome*, each as one transport message:
//!
//! | hello field | size | | welcome field | size |
//! |---|---:|---|---|---:|
//! | magic `b"CRPC"` | 4 | | magic `b"CRPC"` | 4 |
//! | protocol version | 2 | | protocol version | 2 |
//! | codec name length *n* (1–32) | 1 | | status (0 accepted, 1 version unsupported, 2 codec unsupported, 3 busy, 4 stale epoch) | 1 |
//! | codec name, ASCII | *n* | | codec names the server offers, comma-separated: length | 1 |
//! | client id | 16 | | … and the names | *m* |
//! | epoch | 8 | | server instance id | 16 |
//!
//! The client id is random per client process and the epoch changes on every process start, so a
//! server can tell a restarted client (a new epoch for a known id) from a reconnecting one. The
//! server instance id is random per server start, so a reconnecting client can tell a restarted
//! server (another instance: its reply cache is gone) from a link that merely broke.
//!
//! # Sessions
//!
//! A server keeps one session per client id, across that client's links: calls are keyed by
//! (client id, call id), so a copy of a call re-sent over a new link (or over the same link after
//! an attempt timeout) reaches the same entry. An at-most-once call (no
//! [`Flags::IDEMPOTENT`]) runs once; a copy that arrives while it runs waits for the same
//! outcome, and a copy that arrives later gets the cached reply or error frame, byte for byte.
//! The client trims the cache with [`FrameKind::Release`] frames.

use bytes::{BufMut, Bytes};

use crate::ids::{InterfaceId, MethodId};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 2;

/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 32;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameKind {
    /// A call that expects a reply (or an error).
    Call = 1,
    /// A call that never gets a reply.
    OneWay = 2,
    /// The server has received a call that asked for [`Flags::ACK`]; the method has not run yet.
    Ack = 3,
    /// The successful result of a call, encoded by the codec.
    Reply = 4,
    /// A call failed; the payload is an [`ErrorCode`] and a message.
    Error = 5,
    /// The caller no longer wants the result; the server drops the handler.
    Cancel = 6,
    /// Client to server: the client holds the outcome of every call it numbered below this
    /// frame's call id, so the server may forget them (trim its reply cache). A call id of
    /// `u64::MAX` ends the client's session: the server forgets it entirely. No payload.
    Release = 7,
}

impl FrameKind {
    /// Whether this kind answers a call (Ack, Reply or Error): it travels back to the caller.
    #[inline]
    pub fn is_answer(self) -> bool {
        matches!(self, Self::Ack | Self::Reply | Self::Error)
    }

    #[inline]
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Call,
            2 => Self::OneWay,
            3 => Self::Ack,
            4 => Self::Reply,
            5 => Self::Error,
            6 => Self::Cancel,
            7 => Self::Release,
            _ => return None,
        })
    }
}

/// The goodbye: a [`FrameKind::Release`] frame with call id `u64::MAX` (interface and method 0,
/// no payload). From a client it ends the client's session at once (PROTOCOL.md §3.1); from
/// a server it says the server ended the session (it shuts down) and will answer nothing more
/// on the connection.
pub fn goodbye() -> Bytes {
    let header = Header::new(
        FrameKind::Release,
        u64::MAX,
        InterfaceId::new(0),
        MethodId::new(0),
    );
    Bytes::copy_from_slice(&header.to_bytes())
}

/// Header flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Flags(u16);

impl Flags {
    /// No flags.
    pub const NONE: Flags = Flags(0);
    /// The caller wants an [`FrameKind::Ack`] as soon as the server has the call.
    pub const ACK: Flags = Flags(1);
    /// The method is idempotent (*at-least-once*): the server need not keep its reply for a
    /// re-sent copy, and runs a copy that arrives after the reply again. Without it a call is
    /// *at-most-once*: the server runs it once per call id and answers copies from its reply
    /// cache.
    pub const IDEMPOTENT: Flags = Flags(2);
    /// Call and OneWay frames: the payload starts with a metadata block (see the module docs).
    pub const METADATA: Flags = Flags(4);
    const KNOWN: u16 = Self::ACK.0 | Self::IDEMPOTENT.0 | Self::METADATA.0;

    /// Both sets of flags.
    #[inline]
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// The raw bits.
    #[inline]
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Whether every flag of `other` is set in `self`.
    #[inline]
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The fixed part of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the frame is.
    pub kind: FrameKind,
    /// Flags; see [`Flags`].
    pub flags: Flags,
    /// Which service.
    pub interface: InterfaceId,
    /// The call this frame belongs to.
    pub call_id: u64,
    /// Which method of the service.
    pub method: MethodId,
    /// The interface version the caller was built against.
    pub version: u16,
    /// Length of the payload that follows the header.
    pub payload_len: u32,
    /// Microseconds left before the caller gives up; 0 means no deadline.
    pub budget_micros: u32,
}

impl Header {
    /// A header with no flags, no deadline and an empty payload.
    #[inline]
    pub fn new(kind: FrameKind, call_id: u64, interface: InterfaceId, method: MethodId) -> Self {
        Header {
            kind,
            flags: Flags::NONE,
            interface,
            call_id,
            method,
            version: 0,
            payload_len: 0,
            budget_micros: 0,
        }
    }

    /// Writes the 32 header bytes.
    pub fn encode<B: BufMut + ?Sized>(&self, out: &mut B) {
        // One write of the whole header: a buffer checks its room once, not ten times.
        out.put_slice(&self.to_bytes());
    }

    /// Encodes the header into an array.
    #[inline]
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = PROTOCOL_VERSION;
        out[1] = self.kind as u8;
        out[2..4].copy_from_slice(&self.flags.0.to_be_bytes());
        out[4..8].copy_from_slice(&self.interface.get().to_be_bytes());
        out[8..16].copy_from_slice(&self.call_id.to_be_bytes());
        out[16..20].copy_from_slice(&self.method.get().to_be_bytes());
        out[20..22].copy_from_slice(&self.version.to_be_bytes());
        // 22..24 reserved, zero.
        out[24..28].copy_from_slice(&self.payload_len.to_be_bytes());
        out[28..32].copy_from_slice(&self.budget_micros.to_be_bytes());
        out
    }

    /// Parses and checks the header at the start of `frame`, which must be one whole frame.
    ///
    /// The error tells what was wrong and, when the frame was long enough to carry one, the call
    /// id it claimed, so the receiver can fail that one call instead of the connection.
    #[inline]
    pub fn decode(frame: &[u8]) -> Result<Header, FrameError> {
        let call_id = (frame.len() >= 16).then(|| be_u64(&frame[8..16]));
        let fail = |problem| FrameError { call_id, problem };
        if frame.len() < HEADER_LEN {
            return Err(fail(FrameProblem::Truncated { len: frame.len() }));
        }
        if frame[0] != PROTOCOL_VERSION {
            return Err(fail(FrameProblem::Version { got: frame[0] }));
        }
        let kind = FrameKind::from_u8(frame[1])
            .ok_or(fail(FrameProblem::UnknownKind { got: frame[1] }))?;
        let flags = be_u16(&frame[2..4]);
        let calls_only = Flags::METADATA.0;
        let is_call = matches!(kind, FrameKind::Call | FrameKind::OneWay);
        if flags & !Flags::KNOWN != 0 || (!is_call && flags & calls_only != 0) {
            return Err(fail(FrameProblem::UnknownFlags { got: flags }));
        }
        if frame[22..24] != [0, 0] {
            return Err(fail(FrameProblem::Reserved));
        }
        let payload_len = be_u32(&frame[24..28]);
        let actual = frame.len() - HEADER_LEN;
        if payload_len as usize != actual {
            return Err(fail(FrameProblem::LengthMismatch {
                declared: payload_len,
                actual,
            }));
        }
        Ok(Header {
            kind,
            flags: Flags(flags),
            interface: InterfaceId::new(be_u32(&frame[4..8])),
            call_id: be_u64(&frame[8..16]),
            method: MethodId::new(be_u32(&frame[16..20])),
            version: be_u16(&frame[20..22]),
            payload_len,
            budget_micros: be_u32(&frame[28..32]),
        })
    }
}

#[inline]
fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
#[inline]
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
#[inline]
fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// What the raw bytes of a frame claim, read without checking them: enough to route a frame,
/// answer it or refuse it when [`Header::decode`] would reject it. Each field is `None` when the
/// bytes are too short to hold it (or, for [`Claims::kind`], name no kind).
///
/// Transports and the engine read header fields only through this and [`Header`], so every
/// offset lives in this module.
///
/// ```
/// use courier_proto::ids::{InterfaceId, MethodId};
/// use courier_proto::wire::{Claims, FrameKind, Header};
///
/// let bytes = Header::new(FrameKind::Call, 7, InterfaceId::new(1), MethodId::new(2)).to_bytes();
/// let claims = Claims::read(&bytes[..20]);
/// assert_eq!(claims.kind, Some(FrameKind::Call));
/// assert_eq!((claims.call_id, claims.method), (Some(7), Some(MethodId::new(2))));
/// assert_eq!(claims.payload_len, None, "the length is at offset 24");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Claims {
    /// The kind byte, if it names a kind.
    pub kind: Option<FrameKind>,
    /// The interface id at offset 4.
    pub interface: Option<InterfaceId>,
    /// The call id at offset 8.
    pub call_id: Option<u64>,
    /// The method id at offset 16.
    pub method: Option<MethodId>,
    /// The payload length the header declares, at offset 24.
    pub payload_len: Option<u32>,
}

impl Claims {
    /// What a decoded header says.
    #[inline]
    pub fn of(header: &Header) -> Claims {
        Claims {
            kind: Some(header.kind),
            interface: Some(header.interface),
            call_id: Some(header.call_id),
            method: Some(header.method),
            payload_len: Some(header.payload_len),
        }
    }

    /// Reads what `frame` claims; never fails.
    pub fn read(frame: &[u8]) -> Claims {
        Claims {
            kind: kind_of(frame),
            interface: frame.get(4..8).map(|b| InterfaceId::new(be_u32(b))),
            call_id: call_id_of(frame),
            method: frame.get(16..20).map(|b| MethodId::new(be_u32(b))),
            payload_len: frame.get(24..28).map(be_u32),
        }
    }

    /// The frame's kind, if its bytes say `kind`.
    pub fn is(&self, kind: FrameKind) -> bool {
        self.kind == Some(kind)
    }

    /// The whole frame's size as the header declares it (header included), if the header is
    /// long enough to say.
    pub fn declared_size(&self) -> Option<usize> {
        self.payload_len.map(|len| HEADER_LEN + len as usize)
    }
}

/// An Error frame answering what `about` claimed (its call id, interface and method, 0 where
/// the claim was too short to carry one), with `payload`.
pub fn error_frame(about: &Claims, payload: &ErrorPayload) -> Bytes {
    let mut header = Header::new(
        FrameKind::Error,
        about.call_id.unwrap_or(0),
        about.interface.unwrap_or(InterfaceId::new(0)),
        about.method.unwrap_or(MethodId::new(0)),
    );
    header.payload_len = u32::try_from(payload.encoded_len()).unwrap_or(u32::MAX);
    let mut out = bytes::BytesMut::with_capacity(HEADER_LEN + payload.encoded_len());
    header.encode(&mut out);
    payload.encode(&mut out);
    out.freeze()
}

/// Headers broken on purpose, for tests of how a peer refuses bad frames (the conformance
/// suite's hostile frames): each writes one field of the header at the start of `frame`,
/// whatever it says, so that the offsets stay in this module. Each panics if `frame` is
/// shorter than the field's end (a test's own bytes, never a peer's).
///
/// ```
/// use courier_proto::ids::{InterfaceId, MethodId};
/// use courier_proto::wire::{forge, FrameKind, FrameProblem, Header};
///
/// let mut frame = Header::new(FrameKind::Call, 1, InterfaceId::new(1), MethodId::new(1)).to_bytes();
/// forge::set_reserved(&mut frame, 1);
/// assert_eq!(Header::decode(&frame).map_err(|e| e.problem), Err(FrameProblem::Reserved));
/// ```
pub mod forge {
    /// Writes the kind byte (offset 1), which may name no kind.
    pub fn set_kind(frame: &mut [u8], kind: u8) {
        frame[1] = kind;
    }

    /// Writes the flags (offset 2), known bits or not.
    pub fn set_flags(frame: &mut [u8], bits: u16) {
        frame[2..4].copy_from_slice(&bits.to_be_bytes());
    }

    /// Writes the reserved bytes (offset 22), which a valid header keeps at zero.
    pub fn set_reserved(frame: &mut [u8], value: u16) {
        frame[22..24].copy_from_slice(&value.to_be_bytes());
    }

    /// Writes the protocol version byte (offset 0).
    pub fn set_version(frame: &mut [u8], version: u8) {
        frame[0] = version;
    }
}

/// The kind byte of a frame, if it names a kind: the one header field a transport reads on
/// every frame, without the rest of [`Claims`].
#[inline]
pub fn kind_of(frame: &[u8]) -> Option<FrameKind> {
    frame.get(1).copied().and_then(FrameKind::from_u8)
}

/// The call id of a frame, if it is long enough to carry one.
#[inline]
pub fn call_id_of(frame: &[u8]) -> Option<u64> {
    frame.get(8..16).map(be_u64)
}

/// Writes `call_id` into the header at the start of `frame` (a frame encoded before its id
/// was chosen).
///
/// # Panics
///
/// If `frame` is shorter than a header: it is this side's own frame, never a peer's.
#[inline]
pub fn set_call_id(frame: &mut [u8], call_id: u64) {
    frame[8..16].copy_from_slice(&call_id.to_be_bytes());
}

/// Where the payload length sits in a header, and its encoding: for a buffer that patches
/// the length in once the payload is written (`FrameBuf::patch`).
#[inline]
pub fn payload_len_patch(payload_len: u32) -> (usize, [u8; 4]) {
    (24, payload_len.to_be_bytes())
}

/// A frame that could not be accepted, and the call it claimed to belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The call id at offset 8, when the frame was long enough to carry one.
    pub call_id: Option<u64>,
    /// What was wrong.
    pub problem: FrameProblem,
}

/// The two sides could not agree on how to talk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer speaks another protocol version; upgrade the older side.
    #[error("protocol version mismatch: this side speaks {ours}, the peer {theirs}")]
    Version {
        /// This side's version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The server does not offer the client's codec; use one the server offers.
    #[error("the server does not offer the codec `{requested}`; it offers: {offered}")]
    Codec {
        /// The codec the client asked for.
        requested: String,
        /// The codecs the server offers, comma-separated.
        offered: String,
    },
    /// The peer sent something that is not a Courier handshake: is it a Courier endpoint?
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// The peer did not complete the handshake in time.
    #[error("the peer did not complete the handshake in time")]
    Timeout,
    /// The link closed during the handshake.
    #[error("the link closed during the handshake")]
    Closed,
    /// The server is at its connection limit (in all, or for this peer); retry later or
    /// elsewhere. The server's operator sets the limits with
    /// `Limits::max_connections` and `Limits::max_connections_per_peer`.
    #[error("the server refused the connection: it has as many connections as it allows")]
    Busy,
    /// The server serves this client id with a newer epoch: this client is an older
    /// incarnation (or shares its identity with a newer process).
    #[error("the server knows a newer epoch of this client id; this client is stale")]
    StaleEpoch,
    /// The client's epoch is more than a day ahead of the server's clock: the server refuses
    /// it, so that no hello can lock a client id out for good. Check the client's clock, or
    /// the epoch in its identity file.
    #[error(
        "the server refused the client's epoch: it is more than a day ahead of the server's \
         clock (check the client's clock, or the epoch in its identity file)"
    )]
    EpochOutOfRange,
}

/// What was wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameProblem {
    /// Shorter than the header.
    #[error("frame of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated {
        /// The frame's length.
        len: usize,
    },
    /// A protocol version this side does not speak.
    #[error("frame has protocol version {got}, this side speaks {PROTOCOL_VERSION}")]
    Version {
        /// The version byte received.
        got: u8,
    },
    /// A kind byte that names no frame kind.
    #[error("frame kind {got} is unknown")]
    UnknownKind {
        /// The kind byte received.
        got: u8,
    },
    /// Flag bits this version does not define.
    #[error("frame sets unknown flag bits {got:#06x}")]
    UnknownFlags {
        /// The flags received.
        got: u16,
    },
    /// The reserved bytes were not zero.
    #[error("frame's reserved bytes are not zero")]
    Reserved,
    /// The payload length in the header disagrees with the frame.
    #[error("header declares a {declared}-byte payload but {actual} bytes follow it")]
    LengthMismatch {
        /// The length in the header.
        declared: u32,
        /// The bytes that actually follow.
        actual: usize,
    },
    /// The frame is larger than the configured limit.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
}

/// Codes carried by [`FrameKind::Error`] frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No service with that interface id is registered.
    UnknownInterface = 1,
    /// The service has no method with that id.
    UnknownMethod = 2,
    /// The service's version differs from the caller's.
    VersionMismatch = 3,
    /// The arguments could not be decoded.
    BadRequest = 4,
    /// The authorizer refused the call.
    AccessDenied = 5,
    /// The deadline passed before the handler finished.
    DeadlineExceeded = 6,
    /// The server has too many calls running on this connection.
    Overloaded = 7,
    /// The handler panicked or its reply could not be encoded.
    Internal = 8,
    /// The frame was malformed.
    Protocol = 9,
    /// The frame exceeded the size limit.
    TooLarge = 10,
    /// A copy of an at-most-once call the server no longer remembers: its reply was evicted
    /// from the reply cache (by size or age), or calls numbered after it had been forgotten
    /// before it arrived. It was not run now; it may have run once before.
    ReplyEvicted = 11,
    /// The server is shutting down and did not run the call: send it to another server (or
    /// later), which cannot run it twice.
    Unavailable = 12,
    /// The receiver of a callback is gone: the caller stopped listening.
    Closed = 13,
    /// A copy of an at-most-once call below the client's watermark (a Release said the client
    /// holds its outcome): not run again; the call ran at most once before.
    Released = 14,
    /// A copy of a call that was cancelled before it finished: not run again; the call may
    /// have partly run.
    Cancelled = 15,
    /// The call came on a connection of a client epoch that a newer one replaced (the client
    /// restarted, or someone holding its id said hello with a newer epoch): not run. The
    /// connection closes after this error.
    Superseded = 16,
    /// The server dropped the handler before it finished (its shutdown's grace passed): the
    /// call may have partly run. Copies get the same answer and do not run.
    Aborted = 17,
}

impl ErrorCode {
    /// The code for a raw value, if it names one.
    pub fn from_u16(v: u16) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => UnknownInterface,
            2 => UnknownMethod,
            3 => VersionMismatch,
            4 => BadRequest,
            5 => AccessDenied,
            6 => DeadlineExceeded,
            7 => Overloaded,
            8 => Internal,
            9 => Protocol,
            10 => TooLarge,
            11 => ReplyEvicted,
            12 => Unavailable,
            13 => Closed,
            14 => Released,
            15 => Cancelled,
            16 => Superseded,
            17 => Aborted,
            _ => return None,
        })
    }
}

/// Encodes an error payload: code then message. For [`ErrorCode::TooLarge`], use
/// [`ErrorPayload`], which also carries the sizes.
pub fn encode_error_payload<B: BufMut + ?Sized>(code: ErrorCode, message: &str, out: &mut B) {
    ErrorPayload {
        code: Some(code),
        raw: code as u16,
        too_large: None,
        message: message.to_owned(),
    }
    .encode(out);
}

/// Decodes an error payload into its code (if known), raw code and message. Unknown codes and
/// invalid UTF-8 are kept, not rejected: an error report should reach the user even from a
/// newer peer.
pub fn decode_error_payload(payload: &[u8]) -> (Option<ErrorCode>, u16, String) {
    let p = ErrorPayload::decode(payload);
    (p.code, p.raw, p.message)
}

/// The payload of an [`FrameKind::Error`] frame, parsed.
///
/// | field | size | present |
/// |---|---:|---|
/// | code | 2 | always |
/// | frame size, then the limit it broke | 8 + 8 | only for [`ErrorCode::TooLarge`] |
/// | message, UTF-8 | rest | always (may be empty) |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorPayload {
    /// The code, if this version knows it.
    pub code: Option<ErrorCode>,
    /// The code as sent.
    pub raw: u16,
    /// For [`ErrorCode::TooLarge`]: the refused frame's size and the limit it broke. `None`
    /// for a TooLarge payload too short to carry them (malformed: the caller then reports a
    /// protocol error); ignored for every other code.
    pub too_large: Option<(u64, u64)>,
    /// What the peer said.
    pub message: String,
}

impl ErrorPayload {
    /// A payload with `code` and `message` (for any code but [`ErrorCode::TooLarge`], which
    /// carries sizes too).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorPayload {
        ErrorPayload {
            code: Some(code),
            raw: code as u16,
            too_large: None,
            message: message.into(),
        }
    }

    /// Writes the payload.
    pub fn encode<B: BufMut + ?Sized>(&self, out: &mut B) {
        out.put_u16(self.raw);
        if let Some((size, limit)) = self.sizes() {
            out.put_u64(size);
            out.put_u64(limit);
        }
        out.put_slice(self.message.as_bytes());
    }

    /// The sizes that go on the wire: only a TooLarge error carries them.
    fn sizes(&self) -> Option<(u64, u64)> {
        self.too_large
            .filter(|_| self.raw == ErrorCode::TooLarge as u16)
    }

    /// Its encoded length.
    pub fn encoded_len(&self) -> usize {
        2 + self.sizes().map_or(0, |_| 16) + self.message.len()
    }

    /// Reads a payload. Never fails: what cannot be read is said in the message.
    pub fn decode(payload: &[u8]) -> ErrorPayload {
        if payload.len() < 2 {
            return ErrorPayload {
                code: None,
                raw: 0,
                too_large: None,
                message: String::from("error frame without a code"),
            };
        }
        let raw = be_u16(payload);
        let code = ErrorCode::from_u16(raw);
        let mut rest = &payload[2..];
        let mut too_large = None;
        if code == Some(ErrorCode::TooLarge) && rest.len() >= 16 {
            too_large = Some((be_u64(&rest[..8]), be_u64(&rest[8..16])));
            rest = &rest[16..];
        }
        ErrorPayload {
            code,
            raw,
            too_large,
            message: String::from_utf8_lossy(rest).into_owned(),
        }
    }
}

const MAGIC: &[u8; 4] = b"CRPC";
const MAX_CODEC_NAME: usize = 32;

/// The hello a connecting side sends first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version the client speaks.
    pub version: u16,
    /// The codec the client will use.
    pub codec: String,
    /// Random per client process.
    pub client_id: u128,
    /// New on every client process start.
    pub epoch: u64,
}

impl Hello {
    /// Encodes the hello.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(4 + 2 + 1 + self.codec.len() + 24);
        out.extend_from_slice(MAGIC);
        out.put_u16(self.version);
        out.put_u8(self.codec.len() as u8);
        out.extend_from_slice(self.codec.as_bytes());
        out.put_u128(self.client_id);
        out.put_u64(self.epoch);
        out.into()
    }

    /// Decodes and checks a hello.
    pub fn decode(b: &[u8]) -> Result<Hello, HandshakeError> {
        let bad = |why: &str| HandshakeError::Malformed(why.to_owned());
        if b.len() < 7 || &b[..4] != MAGIC {
            return Err(bad("hello does not start with the Courier magic"));
        }
        let version = be_u16(&b[4..6]);
        let n = b[6] as usize;
        if n == 0 || n > MAX_CODEC_NAME {
            return Err(bad("codec name length out of range"));
        }
        if b.len() != 7 + n + 24 {
            return Err(bad("hello has the wrong length"));
        }
        let codec = std::str::from_utf8(&b[7..7 + n])
            .ok()
            .filter(|s| s.is_ascii())
            .ok_or_else(|| bad("codec name is not ASCII"))?
            .to_owned();
        let rest = &b[7 + n..];
        let mut id = [0u8; 16];
        id.copy_from_slice(&rest[..16]);
        Ok(Hello {
            version,
            codec,
            client_id: u128::from_be_bytes(id),
            epoch: be_u64(&rest[16..24]),
        })
    }
}

/// Whether the server accepted a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum WelcomeStatus {
    /// Accepted: calls may flow.
    Accepted = 0,
    /// The server does not speak the client's protocol version.
    VersionUnsupported = 1,
    /// The server does not offer the client's codec.
    CodecUnsupported = 2,
    /// The server is at its connection limit (in all, or for this peer); the client may retry
    /// later. The server closes the link after this welcome.
    Busy = 3,
    /// The server already serves this client id with a newer epoch: the hello comes from an
    /// older incarnation of the client. The server closes the link after this welcome.
    StaleEpoch = 4,
    /// The hello's epoch is more than a day ahead of the server's clock (epochs are start
    /// times in µs, or small counts): refused, so that no hello can lock a client id out for
    /// good. The server closes the link after this welcome.
    EpochOutOfRange = 5,
}

/// The server's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The protocol version the server speaks.
    pub version: u16,
    /// Whether the hello was accepted.
    pub status: WelcomeStatus,
    /// The codecs the server offers, comma-separated.
    pub codecs: String,
    /// The client's session on the server: the server's instance id (random per server
    /// start) with the session's number mixed in. The same on every connection of one session;
    /// another value when the server restarted or no longer holds the client's session, so a
    /// client that reconnects and finds another value knows the server lost its at-most-once
    /// calls in flight (and their cached outcomes). Refusals carry the bare instance id.
    pub instance: u128,
}

impl Welcome {
    /// Encodes the welcome.
    pub fn encode(&self) -> Bytes {
        let codecs = &self.codecs.as_bytes()[..self.codecs.len().min(255)];
        let mut out = Vec::with_capacity(8 + codecs.len() + 16);
        out.extend_from_slice(MAGIC);
        out.put_u16(self.version);
        out.put_u8(self.status as u8);
        out.put_u8(codecs.len() as u8);
        out.extend_from_slice(codecs);
        out.put_u128(self.instance);
        out.into()
    }

    /// Decodes and checks a welcome.
    pub fn decode(b: &[u8]) -> Result<Welcome, HandshakeError> {
        let bad = |why: &str| HandshakeError::Malformed(why.to_owned());
        if b.len() < 8 || &b[..4] != MAGIC {
            return Err(bad("welcome does not start with the Courier magic"));
        }
        let status = match b[6] {
            0 => WelcomeStatus::Accepted,
            1 => WelcomeStatus::VersionUnsupported,
            2 => WelcomeStatus::CodecUnsupported,
            3 => WelcomeStatus::Busy,
            4 => WelcomeStatus::StaleEpoch,
            5 => WelcomeStatus::EpochOutOfRange,
            _ => return Err(bad("unknown welcome status")),
        };
        let m = b[7] as usize;
        if b.len() != 8 + m + 16 {
            return Err(bad("welcome has the wrong length"));
        }
        let mut instance = [0u8; 16];
        instance.copy_from_slice(&b[8 + m..]);
        Ok(Welcome {
            version: be_u16(&b[4..6]),
            status,
            codecs: String::from_utf8_lossy(&b[8..8 + m]).into_owned(),
            instance: u128::from_be_bytes(instance),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the exact bytes of the header layout documented above.
    #[test]
    fn header_layout_is_pinned() {
        let h = Header {
            kind: FrameKind::Call,
            flags: Flags::ACK,
            interface: InterfaceId::new(0x0A0B_0C0D),
            call_id: 0x0102_0304_0506_0708,
            method: MethodId::new(0x1112_1314),
            version: 0x2122,
            payload_len: 3,
            budget_micros: 0x3132_3334,
        };
        let bytes = h.to_bytes();
        #[rustfmt::skip]
        let expected: [u8; 32] = [
            2, 1, 0x00, 0x01,                               // version, kind, flags
            0x0A, 0x0B, 0x0C, 0x0D,                         // interface id
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // call id
            0x11, 0x12, 0x13, 0x14,                         // method id
            0x21, 0x22, 0, 0,                               // interface version, reserved
            0, 0, 0, 3,                                     // payload length
            0x31, 0x32, 0x33, 0x34,                         // deadline budget
        ];
        assert_eq!(bytes, expected);
        let mut frame = bytes.to_vec();
        frame.extend_from_slice(b"abc");
        assert_eq!(Header::decode(&frame), Ok(h));
    }

    #[test]
    fn kinds_have_their_documented_values() {
        for (kind, v) in [
            (FrameKind::Call, 1),
            (FrameKind::OneWay, 2),
            (FrameKind::Ack, 3),
            (FrameKind::Reply, 4),
            (FrameKind::Error, 5),
            (FrameKind::Cancel, 6),
        ] {
            assert_eq!(kind as u8, v);
            assert_eq!(FrameKind::from_u8(v), Some(kind));
        }
    }

    #[test]
    fn malformed_headers_are_rejected_with_the_call_id() {
        let good = Header::new(FrameKind::Call, 77, InterfaceId::new(1), MethodId::new(2));
        let bytes = good.to_bytes();

        let e = Header::decode(&bytes[..10]).unwrap_err();
        assert_eq!(e.call_id, None);
        assert!(matches!(e.problem, FrameProblem::Truncated { len: 10 }));

        let e = Header::decode(&bytes[..20]).unwrap_err();
        assert_eq!(e.call_id, Some(77));

        let mut v = bytes;
        v[0] = 9;
        let e = Header::decode(&v).unwrap_err();
        assert_eq!(e.problem, FrameProblem::Version { got: 9 });
        assert_eq!(e.call_id, Some(77));

        let mut v = bytes;
        v[1] = 42;
        assert_eq!(
            Header::decode(&v).unwrap_err().problem,
            FrameProblem::UnknownKind { got: 42 }
        );

        let mut v = bytes;
        v[3] = 0x80;
        assert!(matches!(
            Header::decode(&v).unwrap_err().problem,
            FrameProblem::UnknownFlags { .. }
        ));

        let mut v = bytes;
        v[23] = 1;
        assert_eq!(
            Header::decode(&v).unwrap_err().problem,
            FrameProblem::Reserved
        );

        let mut v = bytes.to_vec();
        v[27] = 200; // claims 200 bytes of payload, has 1
        v.push(0);
        assert_eq!(
            Header::decode(&v).unwrap_err().problem,
            FrameProblem::LengthMismatch {
                declared: 200,
                actual: 1
            }
        );
    }

    #[test]
    fn handshake_round_trips_and_rejects_garbage() {
        let h = Hello {
            version: 1,
            codec: "cbor".into(),
            client_id: 0xDEAD_BEEF,
            epoch: 7,
        };
        assert_eq!(Hello::decode(&h.encode()), Ok(h.clone()));
        let w = Welcome {
            version: 1,
            status: WelcomeStatus::CodecUnsupported,
            codecs: "xdr".into(),
            instance: 0x0123_4567_89AB_CDEF_0011_2233_4455_6677,
        };
        assert_eq!(Welcome::decode(&w.encode()), Ok(w.clone()));
        let stale = Welcome {
            status: WelcomeStatus::StaleEpoch,
            ..w.clone()
        };
        assert_eq!(Welcome::decode(&stale.encode()), Ok(stale));
        // A welcome without its instance id (protocol version 1's layout) is refused.
        let short = w.encode();
        assert!(Welcome::decode(&short[..short.len() - 16]).is_err());

        assert!(Hello::decode(b"nope").is_err());
        let mut bad = h.encode().to_vec();
        bad[6] = 200; // codec name length beyond the limit
        assert!(Hello::decode(&bad).is_err());
        let bad = &h.encode()[..20];
        assert!(Hello::decode(bad).is_err());
        assert!(Welcome::decode(b"CRPC\0\x01\x07\0").is_err());
    }

    #[test]
    fn error_payload_round_trips() {
        let mut v = Vec::new();
        encode_error_payload(ErrorCode::AccessDenied, "no", &mut v);
        assert_eq!(
            decode_error_payload(&v),
            (Some(ErrorCode::AccessDenied), 5, "no".to_owned())
        );
        assert_eq!(decode_error_payload(&[1]).0, None);
    }

    #[test]
    fn a_too_large_error_carries_its_sizes() {
        let sent = ErrorPayload {
            code: Some(ErrorCode::TooLarge),
            raw: 10,
            too_large: Some((70_000, 65_536)),
            message: "too big".to_owned(),
        };
        let mut v = Vec::new();
        sent.encode(&mut v);
        assert_eq!(v.len(), sent.encoded_len());
        assert_eq!(&v[..2], &[0, 10]);
        assert_eq!(&v[2..10], &70_000u64.to_be_bytes());
        assert_eq!(ErrorPayload::decode(&v), sent);
        // Found by the fuzzer: a TooLarge payload too short for its sizes decodes without
        // them and encodes back to the same bytes.
        let short = ErrorPayload::decode(&[0, 10, b'x']);
        assert_eq!((short.too_large, short.message.as_str()), (None, "x"));
        let mut again = Vec::new();
        short.encode(&mut again);
        assert_eq!(again, [0, 10, b'x']);
    }

    fn sample() -> Header {
        Header {
            flags: Flags::ACK,
            version: 3,
            payload_len: 2,
            budget_micros: 9,
            ..Header::new(
                FrameKind::Call,
                0x0102_0304_0506_0708,
                InterfaceId::new(11),
                MethodId::new(12),
            )
        }
    }

    #[test]
    fn claims_read_as_far_as_the_bytes_reach() {
        let mut frame = sample().to_bytes().to_vec();
        frame.extend_from_slice(&[0x81, 0x01]);
        let whole = Claims::read(&frame);
        assert_eq!(
            whole,
            Claims::of(&Header::decode(&frame).expect("a valid frame"))
        );
        assert_eq!(whole.declared_size(), Some(frame.len()));
        // Cut short at each field's end: each field is there once its bytes are.
        let at = |n: usize| Claims::read(&frame[..n]);
        assert_eq!(at(0), Claims::default());
        assert_eq!((at(1).kind, at(2).kind), (None, Some(FrameKind::Call)));
        assert_eq!(
            (at(7).interface, at(8).interface),
            (None, Some(InterfaceId::new(11)))
        );
        assert_eq!(
            (at(15).call_id, at(16).call_id),
            (None, Some(0x0102_0304_0506_0708))
        );
        assert_eq!(
            (at(19).method, at(20).method),
            (None, Some(MethodId::new(12)))
        );
        assert_eq!((at(27).payload_len, at(28).payload_len), (None, Some(2)));
        // A kind byte that names no kind is no kind.
        frame[1] = 99;
        assert_eq!(Claims::read(&frame).kind, None);
        assert_eq!(kind_of(&frame), None);
    }

    #[test]
    fn an_error_frame_echoes_what_was_claimed() {
        let claims = Claims::read(&sample().to_bytes()[..20]);
        let payload = ErrorPayload::new(ErrorCode::Protocol, "bad");
        let frame = error_frame(&claims, &payload);
        let header = Header::decode(&frame).expect("a valid error frame");
        assert_eq!(header.kind, FrameKind::Error);
        assert_eq!(
            (header.call_id, header.interface, header.method),
            (
                0x0102_0304_0506_0708,
                InterfaceId::new(11),
                MethodId::new(12)
            )
        );
        assert_eq!(ErrorPayload::decode(&frame[HEADER_LEN..]), payload);
        // Too short to claim anything: call id, interface and method 0.
        let nothing = Header::decode(&error_frame(&Claims::read(&[2]), &payload)).expect("valid");
        assert_eq!(
            (
                nothing.call_id,
                nothing.interface.get(),
                nothing.method.get()
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn call_ids_and_lengths_are_written_where_the_header_reads_them() {
        let mut frame = sample().to_bytes();
        set_call_id(&mut frame, 77);
        assert_eq!(call_id_of(&frame), Some(77));
        let (at, bytes) = payload_len_patch(1234);
        frame[at..at + 4].copy_from_slice(&bytes);
        let claims = Claims::read(&frame);
        assert_eq!((claims.call_id, claims.payload_len), (Some(77), Some(1234)));
        assert_eq!(call_id_of(&frame[..15]), None);
    }

    #[test]
    fn only_acks_replies_and_errors_answer() {
        use FrameKind::*;
        for (kind, answers) in [
            (Call, false),
            (OneWay, false),
            (Ack, true),
            (Reply, true),
            (Error, true),
            (Cancel, false),
            (Release, false),
        ] {
            assert_eq!(kind.is_answer(), answers, "{kind:?}");
        }
    }

    proptest::proptest! {
        /// Any header survives encoding, and what its bytes claim is what it says.
        #[test]
        fn headers_round_trip(
            kind in 1u8..=7,
            flags in 0u16..=3,
            interface: u32,
            call_id: u64,
            method: u32,
            version: u16,
            budget: u32,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let kind = FrameKind::from_u8(kind).expect("a kind");
            let header = Header {
                flags: Flags(flags),
                version,
                payload_len: payload.len() as u32,
                budget_micros: budget,
                ..Header::new(kind, call_id, InterfaceId::new(interface), MethodId::new(method))
            };
            let mut frame = header.to_bytes().to_vec();
            frame.extend_from_slice(&payload);
            proptest::prop_assert_eq!(Header::decode(&frame), Ok(header));
            proptest::prop_assert_eq!(Claims::read(&frame), Claims::of(&header));
        }

        /// Arbitrary bytes never panic a decoder, and a refusal names the call id the bytes
        /// claimed.
        #[test]
        fn arbitrary_bytes_are_refused_not_panicked_on(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            let claims = Claims::read(&bytes);
            match Header::decode(&bytes) {
                Ok(header) => proptest::prop_assert_eq!(claims, Claims::of(&header)),
                Err(e) => proptest::prop_assert_eq!(e.call_id, claims.call_id),
            }
            let _ = ErrorPayload::decode(&bytes);
            let _ = Hello::decode(&bytes);
            let _ = Welcome::decode(&bytes);
        }
    }
}

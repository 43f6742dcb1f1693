//! Errors: [`RpcError`] for everything that can go wrong in a call, and the smaller errors of the
//! layers beneath it.

use std::fmt;

use crate::ids::{InterfaceId, MethodId};
use std::sync::Arc;

pub use crate::wire::HandshakeError;
use crate::wire::{ErrorCode, ErrorPayload, FrameProblem};

/// Everything that can go wrong in a call.
///
/// Application errors are not here: a method that returns `Result<T, E>` delivers `E` to the
/// caller as `Ok(Err(e))`, typed. An `RpcError` means the call itself did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// The connection closed or failed before the reply arrived, and the client could not
    /// reconnect within its [`ReconnectPolicy`](crate::ReconnectPolicy) and the call's deadline.
    /// An at-most-once call may or may not have run on the server (at most once); retry only
    /// if that is acceptable.
    #[error("connection lost before the reply arrived: {0}")]
    ConnectionLost(String),
    /// This at-most-once call may or may not have run, and the server cannot tell: the client
    /// reconnected while it was in flight and found that the server no longer holds its
    /// session (the server restarted, or forgot the session: its linger passed, it was
    /// evicted to make room, or the client's last sibling said goodbye), or the server refused
    /// a copy of it that it will not run (the error frame codes Released, Cancelled,
    /// Superseded, Aborted). The call is never run a second time; check the service's state
    /// before retrying.
    #[error("the outcome is unknown: the method may or may not have run ({0})")]
    OutcomeUnknown(String),
    /// The server no longer remembers this at-most-once call: its reply was evicted from the
    /// server's reply cache (by [`Limits::reply_cache_bytes`](crate::Limits::reply_cache_bytes)
    /// or [`Limits::reply_cache_age`](crate::Limits::reply_cache_age)) before a re-sent copy
    /// arrived. The copy was not run; the method may have run once before.
    #[error("the server forgot the call's reply, so its outcome is unknown: {0}")]
    ReplyEvicted(String),
    /// The call's deadline passed. The server drops the handler when it sees the deadline pass;
    /// raise the timeout in `CallOptions` if the method is legitimately slow.
    #[error("the call's deadline passed before the reply arrived")]
    DeadlineExceeded,
    /// The server has no service with this interface id: check that the service is registered
    /// on the server and that both sides agree on its id.
    #[error("the server has no service with interface id {interface}")]
    UnknownInterface {
        /// The interface that was called.
        interface: InterfaceId,
    },
    /// The service exists but has no method with this id: the client was probably built
    /// against a newer definition of the service.
    #[error("the service {interface} has no method with id {method}")]
    UnknownMethod {
        /// The interface that was called.
        interface: InterfaceId,
        /// The method that was called.
        method: MethodId,
    },
    /// The client and the server were built against different versions of the service.
    #[error("version mismatch for interface {interface}: {message}")]
    VersionMismatch {
        /// The interface that was called.
        interface: InterfaceId,
        /// What each side has.
        message: String,
    },
    /// The server's authorizer refused this peer the method.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// The server has too many calls running on this connection; back off and retry.
    #[error("the server is overloaded: {0}")]
    Overloaded(String),
    /// The arguments or the reply could not be encoded or decoded. Both sides must use the same
    /// types for a method; the message says which value failed.
    #[error("codec error: {0}")]
    Codec(String),
    /// The server could not decode the arguments of the call.
    #[error("the server could not decode the call's arguments: {0}")]
    BadRequest(String),
    /// A frame was larger than the configured limit; raise `max_frame_size` on both sides or
    /// send less per call.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The frame's size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The server is shutting down and did not run the call ([`Server::shutdown`]): it is safe
    /// to send it again, to another server or later ([`RpcError::is_retryable`]).
    ///
    /// [`Server::shutdown`]: crate::Server::shutdown
    #[error("the server is unavailable: {0}")]
    Unavailable(String),
    /// The receiver of a callback is gone: the caller stopped listening
    /// ([`Callback`](crate::Callback)).
    #[error("closed: {0}")]
    Closed(String),
    /// The peer broke the protocol (a malformed frame). The connection's other calls go on.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The handshake failed: the two sides cannot talk.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The transport failed to connect or to carry a frame.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An address could not be used, or a name could not be bound to one.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// The handler panicked or its reply could not be produced; see the server's log.
    #[error("the server failed to handle the call: {0}")]
    Internal(String),
    /// A blocking call was made from inside an async runtime, where blocking the thread would
    /// stall other tasks; `.await` the async method instead.
    #[error("blocking call made from inside an async runtime; await the async method instead")]
    BlockingInAsync,
    /// The server returned an error code this version does not know.
    #[error("the server returned error code {code}: {message}")]
    Remote {
        /// The raw code.
        code: u16,
        /// The server's message.
        message: String,
    },
}

impl RpcError {
    /// A short, stable name of the error's kind (`deadline_exceeded`, `connection_lost`, …):
    /// what spans record as a call's outcome.
    pub fn kind(&self) -> &'static str {
        match self {
            RpcError::ConnectionLost(_) => "connection_lost",
            RpcError::OutcomeUnknown(_) => "outcome_unknown",
            RpcError::ReplyEvicted(_) => "reply_evicted",
            RpcError::DeadlineExceeded => "deadline_exceeded",
            RpcError::UnknownInterface { .. } => "unknown_interface",
            RpcError::UnknownMethod { .. } => "unknown_method",
            RpcError::VersionMismatch { .. } => "version_mismatch",
            RpcError::AccessDenied(_) => "access_denied",
            RpcError::Overloaded(_) => "overloaded",
            RpcError::Codec(_) => "codec",
            RpcError::BadRequest(_) => "bad_request",
            RpcError::FrameTooLarge { .. } => "frame_too_large",
            RpcError::Unavailable(_) => "unavailable",
            RpcError::Closed(_) => "closed",
            RpcError::Protocol(_) => "protocol",
            RpcError::Handshake(_) => "handshake",
            RpcError::Transport(_) => "transport",
            RpcError::Address(_) => "address",
            RpcError::Internal(_) => "internal",
            RpcError::BlockingInAsync => "blocking_in_async",
            RpcError::Remote { .. } => "remote",
        }
    }

    /// Whether the server refused the call before running it, so that sending it again (to
    /// another server, or later) cannot run it twice: [`RpcError::Unavailable`] (the server is
    /// shutting down) and [`RpcError::Overloaded`] (too much running).
    pub fn is_retryable(&self) -> bool {
        matches!(self, RpcError::Unavailable(_) | RpcError::Overloaded(_))
    }

    /// The error payload that reports this error to the peer.
    pub(crate) fn to_payload(&self) -> ErrorPayload {
        let (code, message) = self.to_wire();
        let too_large = match self {
            RpcError::FrameTooLarge { size, limit } => Some((*size as u64, *limit as u64)),
            _ => None,
        };
        ErrorPayload {
            code: Some(code),
            raw: code as u16,
            too_large,
            message,
        }
    }

    /// The code and message to put in an error frame for this error.
    pub(crate) fn to_wire(&self) -> (ErrorCode, String) {
        let code = match self {
            RpcError::UnknownInterface { .. } => ErrorCode::UnknownInterface,
            RpcError::UnknownMethod { .. } => ErrorCode::UnknownMethod,
            RpcError::VersionMismatch { .. } => ErrorCode::VersionMismatch,
            RpcError::BadRequest(_) | RpcError::Codec(_) => ErrorCode::BadRequest,
            RpcError::AccessDenied(_) => ErrorCode::AccessDenied,
            RpcError::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            RpcError::Overloaded(_) => ErrorCode::Overloaded,
            RpcError::Protocol(_) => ErrorCode::Protocol,
            RpcError::FrameTooLarge { .. } => ErrorCode::TooLarge,
            RpcError::ReplyEvicted(_) => ErrorCode::ReplyEvicted,
            RpcError::Unavailable(_) => ErrorCode::Unavailable,
            RpcError::Closed(_) => ErrorCode::Closed,
            _ => ErrorCode::Internal,
        };
        let message = match self {
            RpcError::BadRequest(m)
            | RpcError::Codec(m)
            | RpcError::AccessDenied(m)
            | RpcError::Overloaded(m)
            | RpcError::Protocol(m)
            | RpcError::ReplyEvicted(m)
            | RpcError::Unavailable(m)
            | RpcError::Closed(m)
            | RpcError::Internal(m) => m.clone(),
            RpcError::VersionMismatch { message, .. } => message.clone(),
            other => other.to_string(),
        };
        (code, message)
    }

    /// Rebuilds the error a server reported in an error frame.
    pub(crate) fn from_wire(payload: &[u8], interface: InterfaceId, method: MethodId) -> RpcError {
        let ErrorPayload {
            code,
            raw,
            too_large,
            message,
        } = ErrorPayload::decode(payload);
        match code {
            Some(ErrorCode::UnknownInterface) => RpcError::UnknownInterface { interface },
            Some(ErrorCode::UnknownMethod) => RpcError::UnknownMethod { interface, method },
            Some(ErrorCode::VersionMismatch) => RpcError::VersionMismatch { interface, message },
            Some(ErrorCode::BadRequest) => RpcError::BadRequest(message),
            Some(ErrorCode::AccessDenied) => RpcError::AccessDenied(message),
            Some(ErrorCode::DeadlineExceeded) => RpcError::DeadlineExceeded,
            Some(ErrorCode::Overloaded) => RpcError::Overloaded(message),
            Some(ErrorCode::Internal) => RpcError::Internal(message),
            Some(ErrorCode::Protocol) => RpcError::Protocol(message),
            Some(ErrorCode::ReplyEvicted) => RpcError::ReplyEvicted(message),
            Some(ErrorCode::Unavailable) => RpcError::Unavailable(message),
            Some(ErrorCode::Closed) => RpcError::Closed(message),
            // The server did not run the call now, and cannot say whether it ran before.
            Some(
                code @ (ErrorCode::Released
                | ErrorCode::Cancelled
                | ErrorCode::Superseded
                | ErrorCode::Aborted),
            ) => RpcError::OutcomeUnknown(format!("{code:?}: {message}")),
            Some(ErrorCode::TooLarge) => match too_large {
                Some((size, limit)) => RpcError::FrameTooLarge {
                    size: usize::try_from(size).unwrap_or(usize::MAX),
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                },
                // A TooLarge error without its sizes is malformed; keep what the peer said.
                None => RpcError::Protocol(message),
            },
            // A code this side's protocol crate knows and this match does not yet.
            Some(_) | None => RpcError::Remote { code: raw, message },
        }
    }
}

impl From<FrameProblem> for RpcError {
    fn from(p: FrameProblem) -> Self {
        match p {
            FrameProblem::TooLarge { len, limit } => RpcError::FrameTooLarge { size: len, limit },
            other => RpcError::Protocol(other.to_string()),
        }
    }
}

/// An address could not be parsed or used, or a service name could not be bound to one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The text is not an address.
    #[error("`{address}` is not an address: {reason}")]
    Malformed {
        /// The text (its first 100 characters).
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No registered transport serves the scheme: its crate is not compiled in, or not
    /// installed with [`Transports::install`](crate::address::Transports::install).
    #[error(
        "no transport serves `{scheme}://` (registered: {}); add its crate (courier-{scheme}) \
         and install it with `Transports::install`",
        registered.join(", ")
    )]
    UnknownScheme {
        /// The address's scheme.
        scheme: String,
        /// The schemes that are registered.
        registered: Vec<String>,
    },
    /// The transport cannot use this address: a part is missing or an option is unknown or
    /// invalid.
    #[error("cannot use `{address}`: {reason}")]
    Unusable {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The directory failed to answer or refused a record.
    #[error("directory: {0}")]
    Directory(String),
    /// The directory lists no live instance of the service that this client can reach.
    #[error("no reachable instance of `{service}`: {detail}")]
    NoInstance {
        /// The service name looked up.
        service: String,
        /// What was found, and why each was passed over or failed.
        detail: String,
    },
}

/// A cause kept beside a [`TransportError`]'s description: the library error it came from.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A transport failed to connect or to carry a frame.
///
/// Variants that wrap a lower-level failure keep it as their [`source`](std::error::Error::source),
/// so a user can walk down to the `io::Error` or the TLS alert.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TransportError {
    /// The link is closed; no more frames can be sent on it.
    Closed,
    /// Nothing listens at the address.
    NotFound(String),
    /// The address is already taken by another listener.
    AddrInUse(String),
    /// The frame is larger than the transport or the configuration allows.
    FrameTooLarge {
        /// The frame's size.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The TLS handshake failed: the peer's certificate is not trusted, or it refused ours.
    /// Check which roots the client trusts and, with mutual TLS, which the server trusts.
    Tls {
        /// What failed, and with whom.
        detail: String,
        /// The QUIC or TLS error behind it.
        source: Option<Cause>,
    },
    /// A system call failed; `source` is the operating system's error.
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        source: Arc<std::io::Error>,
    },
    /// The connection failed; `source` is the transport library's error.
    Connection {
        /// What was being done, and with whom.
        context: String,
        /// The library's error.
        source: Cause,
    },
    /// The peer did not answer within the configured time.
    Timeout(String),
    /// Any other failure, described by the transport.
    Other(String),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Closed => f.write_str("the link is closed"),
            TransportError::NotFound(at) => write!(f, "nothing listens at `{at}`"),
            TransportError::AddrInUse(at) => write!(f, "the address `{at}` is already in use"),
            TransportError::FrameTooLarge { size, limit } => {
                write!(
                    f,
                    "frame of {size} bytes exceeds the limit of {limit} bytes"
                )
            }
            TransportError::Tls { detail, .. } => write!(f, "TLS handshake failed {detail}"),
            TransportError::Io { context, source } => write!(f, "{context}: {source}"),
            TransportError::Connection { context, source } => write!(f, "{context}: {source}"),
            TransportError::Timeout(what) | TransportError::Other(what) => f.write_str(what),
        }
    }
}

/// The cause is the library's own error, not the `Arc` around it, so it can be downcast.
impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Tls { source, .. } => source
                .as_deref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            TransportError::Io { source, .. } => Some(&**source),
            TransportError::Connection { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

impl TransportError {
    /// An [`TransportError::Io`] for `source`, raised while doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TransportError::Io {
            context: context.into(),
            source: Arc::new(source),
        }
    }

    /// A [`TransportError::Connection`] for a library error `source`, raised while doing
    /// `context`.
    pub fn connection(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        TransportError::Connection {
            context: context.into(),
            source: Arc::new(source),
        }
    }
}

/// Two transport errors are equal when they are the same variant and say the same thing; the
/// causes are compared by what they say, since library errors are rarely comparable.
impl PartialEq for TransportError {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for TransportError {}

/// A codec failed to encode or decode a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(String);

impl CodecError {
    /// An error with the given description.
    pub fn new(message: impl fmt::Display) -> Self {
        CodecError(message.to_string())
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

impl From<CodecError> for RpcError {
    fn from(e: CodecError) -> Self {
        RpcError::Codec(e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_too_large_error_is_rebuilt_from_its_sizes_not_its_message() {
        let payload = RpcError::FrameTooLarge {
            size: 70_000,
            limit: 65_536,
        }
        .to_payload();
        let mut bytes = Vec::new();
        // Whatever the message says (a peer in another language may say anything), the sizes
        // travel as numbers.
        ErrorPayload {
            message: "trop grand".to_owned(),
            ..payload
        }
        .encode(&mut bytes);
        let error = RpcError::from_wire(&bytes, InterfaceId::new(1), MethodId::new(2));
        assert_eq!(
            error,
            RpcError::FrameTooLarge {
                size: 70_000,
                limit: 65_536
            }
        );
    }

    #[test]
    fn transport_errors_keep_their_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no");
        let e = TransportError::io("binding", io);
        let cause = std::error::Error::source(&e).expect("a cause");
        assert_eq!(
            cause.downcast_ref::<std::io::Error>().map(|e| e.kind()),
            Some(std::io::ErrorKind::PermissionDenied)
        );
        let rpc = RpcError::from(e.clone());
        assert!(std::error::Error::source(&rpc).is_some());
        assert_eq!(e.to_string(), "binding: no");
    }
}

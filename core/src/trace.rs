//! A span per call on each side, and the W3C trace context carried in the call's metadata.
//!
//! The client's span is `courier.call`, the server's `courier.handle`, both at `INFO`, with
//! the fields `rpc.service`, `rpc.method`, `call_id` (not for one-way calls on the client),
//! `peer`, `codec`, `transport`,
//! `outcome` (`ok`, or the error's kind) and `duration_us`. With no subscriber that wants them
//! they cost one check per call; until a `tracing` subscriber is set (globally or as a
//! thread's default), none is made at all, so they never fall back to `log` records.
//!
//! With the `opentelemetry` feature, a call made inside a span that has an OpenTelemetry
//! context (through `tracing-opentelemetry`) carries that context as `traceparent` (and
//! `tracestate`) metadata, written and read by the application's global propagator
//! (`opentelemetry::global::set_text_map_propagator`, W3C Trace Context); the server's span
//! takes it as its parent, so a trace follows a request through client and server.

use std::time::Instant;

use tracing::field::Empty;
use tracing::Span;

use crate::error::RpcError;
use crate::peer::Peer;

/// The transport a peer came over.
pub(crate) fn transport(peer: &Peer) -> &'static str {
    match peer {
        Peer::InProcess { .. } => "mem",
        Peer::Process { .. } => "shm",
        Peer::Network { .. } => "quic",
    }
}

/// A short name for how a call ended.
pub(crate) fn outcome<T>(result: &Result<T, RpcError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    }
}

/// The client's span of one call. Disabled (and free) unless a subscriber wants it.
pub(crate) fn client_span(service: &'static str, method: &'static str, codec: &str) -> Span {
    if !tracing::dispatcher::has_been_set() {
        // No subscriber anywhere: not even the callsite's interest is worth asking for (with
        // tracing's `log` feature, which a dependency may turn on, that asks the logger too).
        return Span::none();
    }
    tracing::info_span!(
        "courier.call",
        otel.kind = "client",
        rpc.system = "courier",
        rpc.service = service,
        rpc.method = method,
        call_id = Empty,
        codec,
        peer = Empty,
        transport = Empty,
        outcome = Empty,
        duration_us = Empty,
    )
}

/// The server's span of one call; `names` (the service's and the method's) is asked only if
/// a subscriber wants the span.
pub(crate) fn server_span(
    call_id: u64,
    codec: &str,
    peer: &Peer,
    names: impl FnOnce() -> (Option<&'static str>, Option<&'static str>),
) -> Span {
    if !tracing::dispatcher::has_been_set() {
        // See `client_span`.
        return Span::none();
    }
    let span = tracing::info_span!(
        "courier.handle",
        otel.kind = "server",
        rpc.system = "courier",
        rpc.service = Empty,
        rpc.method = Empty,
        call_id,
        codec,
        peer = Empty,
        transport = Empty,
        outcome = Empty,
        duration_us = Empty,
    );
    if !span.is_disabled() {
        let (service, method) = names();
        span.record("rpc.service", service.unwrap_or("unknown"));
        span.record("rpc.method", method.unwrap_or("unknown"));
        span.record("transport", transport(peer));
        span.record("peer", tracing::field::debug(peer));
    }
    span
}

/// Records how a call ended and how long it took.
pub(crate) fn finish(span: &Span, started: Instant, outcome: &'static str) {
    span.record("outcome", outcome);
    span.record(
        "duration_us",
        u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    );
}

/// The metadata to send with a call made in `span`: `metadata` with the span's trace context
/// added, if it has one.
#[cfg(feature = "opentelemetry")]
pub(crate) fn inject(span: &Span, metadata: &crate::Metadata) -> Option<crate::Metadata> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    struct Writer<'a>(&'a mut crate::Metadata);
    impl opentelemetry::propagation::Injector for Writer<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key.to_ascii_lowercase(), value);
        }
    }
    let mut with = metadata.clone();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut Writer(&mut with))
    });
    Some(with)
}

/// Makes the trace context the caller sent, if any, the parent of the server's `span`.
#[cfg(feature = "opentelemetry")]
pub(crate) fn extract(span: &Span, metadata: &crate::Metadata) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if metadata.get("traceparent").is_none() {
        return;
    }
    struct Reader<'a>(&'a crate::Metadata);
    impl opentelemetry::propagation::Extractor for Reader<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get_str(key)
        }
        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(k, _)| k).collect()
        }
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Reader(metadata)));
    let _ = span.set_parent(parent);
}

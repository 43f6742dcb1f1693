//! A span per call on each side, and the W3C trace context through the call's metadata: over
//! a real QUIC connection, the server's span is the child of the client's, in the same trace.
//! (One test in this binary: it installs the process's global subscriber and propagator.)

use std::time::Duration;

use courier::{Client, Context, Server};
use courier_cbor::Cbor;
use courier_quic::{ClientTls, DevCert, QuicConnector, QuicListener, QuicOptions, ServerTls};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Says what trace context reached it.
#[courier::service]
pub trait Traced {
    /// The `traceparent` metadata of this call, if any.
    async fn traceparent(&self, cx: Context) -> Option<String>;
}

struct Echoes;

impl Traced for Echoes {
    async fn traceparent(&self, cx: Context) -> Option<String> {
        cx.metadata().get_str("traceparent").map(str::to_owned)
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[test]
fn the_server_span_is_a_child_of_the_client_span_across_quic() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("courier-test")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let seen = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            let cert = DevCert::localhost().expect("cert");
            let listener = QuicListener::bind(
                "127.0.0.1:0".parse().expect("addr"),
                ServerTls::dev(&cert),
                QuicOptions::default(),
            )
            .expect("listen");
            let addr = listener.local_addr().expect("addr");
            let server = Server::builder(Cbor::default())
                .service(TracedServer::new(Echoes))
                .build();
            tokio::spawn(async move { server.serve(listener).await });
            let connector = QuicConnector::new(
                addr,
                "localhost",
                ClientTls::trusting_dev(&cert),
                QuicOptions::default(),
            )
            .expect("connector");
            let client = TracedClient::new(
                Client::builder(Cbor::default())
                    .connect(&connector)
                    .await
                    .expect("connect"),
            );
            client
                .traceparent()
                .instrument(tracing::info_span!("request"))
                .await
                .expect("call")
        })
        .await
        .expect("in time")
    });
    drop(runtime);
    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let named = |name: &str| {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no `{name}` span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let (request, call, handle) = (
        named("request"),
        named("courier.call"),
        named("courier.handle"),
    );

    // One trace: the application's span, the client's call span within it, and the server's
    // span, whose parent is the client's span, known only through the wire.
    let trace = call.span_context.trace_id();
    assert_eq!(request.span_context.trace_id(), trace);
    assert_eq!(handle.span_context.trace_id(), trace);
    assert_eq!(call.parent_span_id, request.span_context.span_id());
    assert_eq!(handle.parent_span_id, call.span_context.span_id());
    assert!(
        handle.parent_span_is_remote,
        "the parent came from the other side"
    );
    let traceparent = seen.expect("the handler saw a traceparent");
    assert!(
        traceparent.contains(&call.span_context.span_id().to_string()),
        "{traceparent}"
    );

    // The fields each side records.
    for span in [call, handle] {
        assert_eq!(
            attribute(span, "rpc.method").as_deref(),
            Some("traceparent")
        );
        assert_eq!(
            attribute(span, "rpc.service").as_deref(),
            Some("tracing::Traced")
        );
        assert_eq!(attribute(span, "transport").as_deref(), Some("quic"));
        assert_eq!(attribute(span, "codec").as_deref(), Some("cbor"));
        assert_eq!(attribute(span, "outcome").as_deref(), Some("ok"));
        assert!(attribute(span, "duration_us").is_some());
        assert!(attribute(span, "peer").is_some());
    }
    assert_eq!(attribute(call, "call_id"), attribute(handle, "call_id"));
    assert!(attribute(handle, "call_id").is_some());
}

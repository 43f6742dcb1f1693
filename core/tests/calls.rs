//! Call kinds and call semantics over the in-process transport.
#![allow(clippy::unwrap_used, unreachable_pub)]

mod common;

use std::time::Duration;

use common::*;
use courier::{CallOptions, Client, Limits, MethodId, RpcError, Server};
use courier_cbor::Cbor;
use futures::future::join_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_each_get_their_own_reply() {
    within(async {
        let (server, _probes) = lab_server();
        let lab = LabClient::new(connect(&server).await);
        let calls = (0..10_000u64).map(|i| {
            let lab = lab.clone();
            async move { (i, lab.echo(i * 7 + 1).await) }
        });
        let results = join_all(calls).await;
        assert_eq!(results.len(), 10_000);
        for (i, r) in results {
            assert_eq!(r.unwrap(), i * 7 + 1);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_caller_future_drops_the_handler() {
    within(async {
        let (server, mut probes) = lab_server();
        let lab = LabClient::new(connect(&server).await);
        let task = tokio::spawn({
            let lab = lab.clone();
            async move { lab.hold(1).await }
        });
        assert_eq!(probes.started.recv().await, Some(1));
        task.abort();
        assert_eq!(probes.dropped.recv().await, Some(1));
        // The connection still works afterwards.
        assert_eq!(lab.echo(5).await.unwrap(), 5);
        assert!(probes.finished.try_recv().is_err());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_fails_the_call_and_drops_the_handler() {
    within(async {
        let (server, mut probes) = lab_server();
        let lab = LabClient::new(connect(&server).await);
        let hurried = lab.with_options(CallOptions::new().timeout(Duration::from_millis(50)));
        let err = expect_err(hurried.hold(2).await);
        assert_eq!(err, RpcError::DeadlineExceeded);
        assert_eq!(probes.started.recv().await, Some(2));
        assert_eq!(probes.dropped.recv().await, Some(2));
        assert!(probes.finished.try_recv().is_err());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_call_runs_its_handler() {
    within(async {
        let (server, mut probes) = lab_server();
        let lab = LabClient::new(connect(&server).await);
        lab.note(77).await.unwrap();
        assert_eq!(probes.noted.recv().await, Some(77));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_call_returns_while_the_handler_is_still_blocked() {
    within(async {
        let (server, mut probes) = lab_server();
        let lab = LabClient::new(connect(&server).await);
        let pending = lab.hold_acked(3).await.unwrap();
        // Acked: the server has the call. The handler is blocked on the gate, unfinished.
        assert_eq!(probes.started.recv().await, Some(3));
        assert!(probes.finished.try_recv().is_err());
        probes.gate.add_permits(1);
        assert_eq!(pending.await.unwrap(), 3);
        assert_eq!(probes.finished.recv().await, Some(3));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_call_reports_an_early_error() {
    within(async {
        let (server, _probes) = lab_server();
        let client = connect(&server).await;
        let method = courier::MethodDesc {
            idempotent: false,
            method: MethodId::new(0xBAD),
            ..LabClient::<Cbor>::ECHO
        };
        let err = expect_err(
            client
                .call_acked::<_, u64>(&method, (1u64,), &CallOptions::new())
                .await
                .unwrap()
                .await,
        );
        assert!(matches!(err, RpcError::UnknownMethod { .. }), "{err:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_call_from_a_plain_thread() {
    within(async {
        let (server, _probes) = lab_server();
        let lab = LabClient::new(connect(&server).await);
        let in_thread = lab.clone();
        let answer = std::thread::spawn(move || in_thread.echo_blocking(41))
            .join()
            .unwrap();
        assert_eq!(answer.unwrap(), 41);
        // From inside the runtime it refuses instead of stalling the executor.
        assert_eq!(lab.echo_blocking(1), Err(RpcError::BlockingInAsync));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_calls_back_a_service_the_client_exports() {
    within(async {
        let (lab, _probes) = lab();
        // This server has no Helper of its own: the one called is the client's.
        let server = Server::builder(Cbor::default())
            .service(LabServer::new(lab))
            .build();
        struct ClientSideHelper;
        impl Helper for ClientSideHelper {
            async fn triple(&self, x: u32) -> u32 {
                x * 300
            }
        }
        let builder = Client::builder(Cbor::default()).export(HelperServer::new(ClientSideHelper));
        let lab = LabClient::new(connect_with(&server, builder).await);
        assert_eq!(lab.ask_back(2).await.unwrap(), Ok(600));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_application_error_reaches_the_caller() {
    within(async {
        let (server, _probes) = lab_server();
        let lab = LabClient::new(connect(&server).await);
        assert_eq!(lab.div(7, 2).await.unwrap(), Ok(3));
        assert_eq!(lab.div(1, 0).await.unwrap(), Err(DivError::ByZero));
        assert_eq!(
            lab.div(i32::MIN, -1).await.unwrap(),
            Err(DivError::Overflow { a: i32::MIN })
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_server_and_one_connection() {
    within(async {
        let (server, _probes) = lab_server();
        let client = connect(&server).await;
        let lab = LabClient::new(client.clone());
        let helper = HelperClient::new(client);
        let (a, b) = tokio::join!(lab.echo(10), helper.triple(10));
        assert_eq!((a.unwrap(), b.unwrap()), (10, 30));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_interface_method_and_version_fail_at_once() {
    within(async {
        let (lab, _probes) = lab();
        let server = Server::builder(Cbor::default())
            .service(LabServer::new(lab))
            .build();
        let client = connect(&server).await;

        let err = expect_err(HelperClient::new(client.clone()).triple(1).await);
        assert!(matches!(err, RpcError::UnknownInterface { .. }), "{err:?}");

        let bad_method = courier::MethodDesc {
            idempotent: false,
            method: MethodId::new(0xBAD),
            ..LabClient::<Cbor>::ECHO
        };
        let err = expect_err(
            client
                .call::<_, u64>(&bad_method, (1u64,), &CallOptions::new())
                .await,
        );
        assert!(matches!(err, RpcError::UnknownMethod { .. }), "{err:?}");

        let bad_version = courier::MethodDesc {
            idempotent: false,
            version: 9,
            ..LabClient::<Cbor>::ECHO
        };
        let err = expect_err(
            client
                .call::<_, u64>(&bad_version, (1u64,), &CallOptions::new())
                .await,
        );
        assert!(matches!(err, RpcError::VersionMismatch { .. }), "{err:?}");

        // Arguments of the wrong type are a BadRequest, not a hang or a panic.
        let err = expect_err(
            client
                .call::<_, u64>(&LabClient::<Cbor>::ECHO, ("text",), &CallOptions::new())
                .await,
        );
        assert!(matches!(err, RpcError::BadRequest(_)), "{err:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_an_internal_error_and_the_connection_goes_on() {
    within(async {
        let (server, _probes) = lab_server();
        let lab = LabClient::new(connect(&server).await);
        let err = expect_err(lab.explode().await);
        assert!(
            matches!(&err, RpcError::Internal(m) if m.contains("boom")),
            "{err:?}"
        );
        assert_eq!(lab.echo(3).await.unwrap(), 3);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorizer_refuses_with_access_denied() {
    within(async {
        let (lab, _probes) = lab();
        let div = LabClient::<Cbor>::DIV.method;
        let server = Server::builder(Cbor::default())
            .service(LabServer::new(lab))
            .authorizer(move |_: &courier::Peer, _, m| m != div)
            .build();
        let lab = LabClient::new(connect(&server).await);
        let err = expect_err(lab.div(1, 1).await);
        assert!(matches!(err, RpcError::AccessDenied(_)), "{err:?}");
        assert_eq!(lab.echo(1).await.unwrap(), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_beyond_the_limit_are_refused_as_overloaded() {
    within(async {
        let (lab, mut probes) = lab();
        let server = Server::builder(Cbor::default())
            .service(LabServer::new(lab))
            .limits(Limits::default().max_handlers(2))
            .build();
        let lab = LabClient::new(connect(&server).await);
        let a = lab.hold_acked(1).await.unwrap();
        let b = lab.hold_acked(2).await.unwrap();
        probes.started.recv().await;
        probes.started.recv().await;
        let err = expect_err(lab.echo(3).await);
        assert!(matches!(err, RpcError::Overloaded(_)), "{err:?}");
        probes.gate.add_permits(2);
        assert_eq!(a.await.unwrap() + b.await.unwrap(), 3);
        assert_eq!(lab.echo(3).await.unwrap(), 3);
    })
    .await
}

/// A handler's place is free by the time its caller has the answer: a caller at the limit that
/// calls again at once is never refused. The handler waits (so it ends on a task of its own,
/// on whichever worker), and the caller runs on the other worker as soon as the reply reaches
/// it: before the place was given back ahead of the reply, the caller sometimes won that race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_its_answer_finds_the_handlers_place_free() {
    within(async {
        let (lab, mut probes) = lab();
        let server = Server::builder(Cbor::default())
            .service(LabServer::new(lab))
            .limits(Limits::default().max_handlers(1))
            .build();
        let lab = LabClient::new(connect(&server).await);
        for round in 0..200 {
            let held = tokio::spawn({
                let lab = lab.clone();
                async move { lab.hold(round).await }
            });
            assert_eq!(probes.started.recv().await, Some(round));
            probes.gate.add_permits(1);
            assert_eq!(held.await.unwrap().unwrap(), round);
            let again = lab.echo(u64::from(round)).await;
            assert_eq!(again, Ok(u64::from(round)), "round {round}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_limit_are_refused_on_both_sides() {
    within(async {
        let (lab, _probes) = lab();
        let server = Server::builder(Cbor::default())
            .service(LabServer::new(lab))
            .limits(Limits::default().max_frame_size(1024))
            .build();
        // The client's own limit stops a large call before it leaves.
        let small = Client::builder(Cbor::default()).limits(Limits::default().max_frame_size(1024));
        let lab_small = LabClient::new(connect_with(&server, small).await);
        let err = expect_err(lab_small.echo_bytes(vec![1; 4096]).await);
        assert!(matches!(err, RpcError::FrameTooLarge { .. }), "{err:?}");

        // The server's limit refuses what a more generous client sends, and the connection
        // carries on with the next call.
        let lab = LabClient::new(connect(&server).await);
        let err = expect_err(lab.echo_bytes(vec![1; 4096]).await);
        assert!(matches!(err, RpcError::FrameTooLarge { .. }), "{err:?}");
        assert_eq!(lab.echo_bytes(vec![2; 16]).await.unwrap(), vec![2; 16]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_for_a_slot_when_too_many_are_in_flight() {
    within(async {
        let (server, mut probes) = lab_server();
        let limited = Client::builder(Cbor::default()).limits(Limits::default().max_in_flight(1));
        let lab = LabClient::new(connect_with(&server, limited).await);
        let first = tokio::spawn({
            let lab = lab.clone();
            async move { lab.hold(1).await }
        });
        assert_eq!(probes.started.recv().await, Some(1));
        // The second call cannot start until the first frees the only slot.
        let second = tokio::spawn({
            let lab = lab.clone();
            async move { lab.hold(2).await }
        });
        tokio::task::yield_now().await;
        assert!(probes.started.try_recv().is_err());
        probes.gate.add_permits(2);
        assert_eq!(first.await.unwrap().unwrap(), 1);
        assert_eq!(second.await.unwrap().unwrap(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_the_peer() {
    within(async {
        let (server, _probes) = lab_server();
        let lab = LabClient::new(connect(&server).await);
        assert!(lab.whoami().await.unwrap().contains("InProcess"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_listener_and_dialer() {
    within(async {
        let (server, _probes) = lab_server();
        let listener = courier::transport::mem::Listener::bind("calls-test").unwrap();
        assert!(matches!(
            courier::transport::mem::Listener::bind("calls-test"),
            Err(courier::TransportError::AddrInUse(_))
        ));
        let serving = tokio::spawn(async move { server.serve(listener).await });
        let client = Client::builder(Cbor::default())
            .connect(&courier::transport::mem::Dialer::new("calls-test"))
            .await
            .unwrap();
        assert_eq!(LabClient::new(client).echo(8).await.unwrap(), 8);
        serving.abort();
        let err = Client::builder(Cbor::default())
            .connect(&courier::transport::mem::Dialer::new("nobody-here"))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            RpcError::Transport(courier::TransportError::NotFound(_))
        ));
    })
    .await
}

mod first {
    #[courier::service]
    pub trait Twin {
        /// Says which twin answered.
        async fn who(&self) -> u8;
    }
}

mod second {
    #[courier::service]
    pub trait Twin {
        /// Says which twin answered.
        async fn who(&self) -> u8;
    }
}

struct One;
impl first::Twin for One {
    async fn who(&self) -> u8 {
        1
    }
}

struct Two;
impl second::Twin for Two {
    async fn who(&self) -> u8 {
        2
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traits_of_the_same_name_in_different_modules_are_different_services() {
    within(async {
        let one = first::TwinClient::<Cbor>::WHO;
        let two = second::TwinClient::<Cbor>::WHO;
        assert_ne!(one.interface, two.interface);
        // The id is the core's stable_id of the trait's path: what a peer in another language
        // computes too.
        let path = concat!(module_path!(), "::first::Twin");
        assert_eq!(one.service, path);
        assert_eq!(one.interface.get(), courier::ids::stable_id(path));
        assert_eq!(one.method.get(), courier::ids::stable_id("who"));
        let server = Server::builder(Cbor::default())
            .service(first::TwinServer::new(One))
            .service(second::TwinServer::new(Two))
            .build();
        let client = connect(&server).await;
        assert_eq!(first::TwinClient::new(client.clone()).who().await, Ok(1));
        assert_eq!(second::TwinClient::new(client).who().await, Ok(2));
    })
    .await
}

/// Where a handler runs: its thread, and the kind of runtime it runs in.
#[courier::service]
pub trait Whereabouts {
    /// The handler's thread and whether its runtime is a current-thread one.
    async fn place(&self) -> (String, bool);
}

struct Report;

impl Whereabouts for Report {
    async fn place(&self) -> (String, bool) {
        let flavor = tokio::runtime::Handle::current().runtime_flavor();
        (
            format!("{:?}", std::thread::current().id()),
            flavor == tokio::runtime::RuntimeFlavor::CurrentThread,
        )
    }
}

/// In process, a call whose handler completes at once runs on its caller's thread (the
/// transport hands the frame straight to the server's engine: no task, no hop), yet inside the
/// server's runtime, so that what the handler spawns or times belongs to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_call_runs_on_its_callers_thread_inside_the_servers_runtime() {
    within(async {
        let (server_end, client_end) = courier::transport::mem::pair();
        // The server on a runtime of its own, of another kind, on another thread.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let server = Server::builder(Cbor::default())
                    .service(WhereaboutsServer::new(Report))
                    .build();
                server.serve_link(server_end).await.unwrap();
                let _ = stopped.await;
            });
        });
        let client = WhereaboutsClient::new(
            Client::builder(Cbor::default())
                .connect_link(client_end)
                .await
                .unwrap(),
        );
        client.place().await.unwrap();
        for _ in 0..100 {
            let client = client.clone();
            let (caller, (handler, current_thread)) = tokio::spawn(async move {
                // Taken in the same poll as the call: a task moves between threads only
                // where it waits, and this call does not.
                let caller = format!("{:?}", std::thread::current().id());
                (caller, client.place().await.unwrap())
            })
            .await
            .unwrap();
            assert_eq!(handler, caller, "the handler ran on another thread");
            assert!(
                current_thread,
                "the handler ran outside the server's runtime"
            );
        }
        drop(client);
        let _ = stop.send(());
        serving.join().unwrap();
    })
    .await
}

/// A service that calls itself, in process, `n` levels deep.
#[courier::service]
pub trait Recursive {
    /// Calls `down(n - 1)` through the client it holds, down to 0; returns the depth reached.
    async fn down(&self, n: u32) -> u32;
}

struct Recurse(std::sync::Arc<std::sync::OnceLock<RecursiveClient<Cbor>>>);

impl Recursive for Recurse {
    async fn down(&self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let Some(client) = self.0.get() else {
            return 0;
        };
        match client.down(n - 1).await {
            Ok(depth) => depth + 1,
            Err(_) => 0,
        }
    }
}

/// Handlers that call in process run on their caller's thread, each one frame deeper: a chain
/// of calls through services a thousand deep must not overflow the stack (past a few levels
/// the handlers go to tasks of their own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_nested_in_process_calls_do_not_overflow_the_stack() {
    within(async {
        let slot = std::sync::Arc::new(std::sync::OnceLock::new());
        let server = Server::builder(Cbor::default())
            .service(RecursiveServer::new(Recurse(slot.clone())))
            .build();
        let client = RecursiveClient::new(connect(&server).await);
        let _ = slot.set(client.clone());
        let depth = tokio::spawn(async move { client.down(1000).await })
            .await
            .unwrap();
        assert_eq!(depth.unwrap(), 1000);
    })
    .await
}

/// The id a call arrived with, as its handler sees it.
#[courier::service]
pub trait Numbered {
    /// The call's own id.
    async fn id(&self, ctx: courier::Context) -> u64;
}

struct Numbers;

impl Numbered for Numbers {
    async fn id(&self, ctx: courier::Context) -> u64 {
        ctx.call_id()
    }
}

/// Calls its caller back twice, each time through a client of its own that it drops at once.
#[courier::service]
pub trait Caller {
    /// The ids the two calls back arrived with.
    async fn twice(&self, ctx: courier::Context) -> Result<(u64, u64), String>;
}

struct Twice;

impl Caller for Twice {
    async fn twice(&self, ctx: courier::Context) -> Result<(u64, u64), String> {
        let once = || async {
            let client = ctx.client(Cbor::default()).map_err(|e| e.to_string())?;
            NumberedClient::new(client)
                .id()
                .await
                .map_err(|e| e.to_string())
        };
        Ok((once().await?, once().await?))
    }
}

/// A handler's calls back go through a session over its link alone; when the handler drops
/// its client, the next one it makes numbers on from the same sequence: a client may still be
/// running a call under an earlier id, so ids are never reused on a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_back_through_clients_made_one_after_another_never_reuse_an_id() {
    within(async {
        let server = Server::builder(Cbor::default())
            .service(CallerServer::new(Twice))
            .build();
        let builder = Client::builder(Cbor::default()).export(NumberedServer::new(Numbers));
        let caller = CallerClient::new(connect_with(&server, builder).await);
        let (first, second) = caller.twice().await.unwrap().unwrap();
        assert_eq!((first, second), (1, 2));
        let (third, fourth) = caller.twice().await.unwrap().unwrap();
        assert_eq!((third, fourth), (3, 4));
    })
    .await
}

/// A service whose id sorts below every other's.
#[courier::service(id = 0x0000_0001)]
pub trait Low {
    /// Says which service answered.
    async fn which(&self) -> String;
}

/// A service whose id sorts above every other's.
#[courier::service(id = 0xFFFF_FFF0)]
pub trait High {
    /// Says which service answered.
    async fn which(&self) -> String;
}

/// Another service under `Low`'s id.
#[courier::service(id = 0x0000_0001)]
pub trait LowAgain {
    /// Never called.
    async fn which(&self) -> String;
}

struct Named(&'static str);

impl Low for Named {
    async fn which(&self) -> String {
        self.0.to_owned()
    }
}

impl High for Named {
    async fn which(&self) -> String {
        self.0.to_owned()
    }
}

impl LowAgain for Named {
    async fn which(&self) -> String {
        self.0.to_owned()
    }
}

#[tokio::test]
async fn each_call_reaches_its_own_service_among_several_registered_in_any_order() {
    within(async {
        let (lab, _probes) = lab();
        let server = Server::builder(Cbor::default())
            .service(HighServer::new(Named("high")))
            .service(LabServer::new(lab))
            .service(LowServer::new(Named("low")))
            .service(HelperServer::new(HelperImpl))
            .build();
        let ids: Vec<u32> = server.interfaces().iter().map(|i| i.id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids.len(), 4);
        assert_eq!(ids, sorted, "the interfaces are listed by id");

        let client = connect(&server).await;
        assert_eq!(LowClient::new(client.clone()).which().await.unwrap(), "low");
        assert_eq!(
            HighClient::new(client.clone()).which().await.unwrap(),
            "high"
        );
        assert_eq!(LabClient::new(client.clone()).echo(41).await.unwrap(), 41);
        assert_eq!(HelperClient::new(client).triple(5).await.unwrap(), 15);

        // A second service under a registered id is refused, naming both.
        let refused = Server::builder(Cbor::default())
            .service(LowServer::new(Named("low")))
            .try_service(LowAgainServer::new(Named("again")))
            .map(drop)
            .unwrap_err();
        assert!(
            refused.contains("Low") && refused.contains("LowAgain"),
            "{refused}"
        );
    })
    .await
}

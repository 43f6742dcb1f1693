//! The directory on a real etcd server, which each test starts on free loopback ports: a
//! server registers and is found by name; killed with SIGKILL, its record vanishes when its
//! lease expires, and a watching client moves to the next instance.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{transports, ChildProcess, Here, Scratch, WhereClient, WhereServer};
use courier::directory::{InstanceRecord, Registrar, Resolver};
use courier::{AddressError, Client, Server};
use courier_binding::testing::Etcd;
use courier_binding::EtcdDirectory;
use courier_cbor::Cbor;
use futures::StreamExt;

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("the test took over 90 s")
}

/// A server process that registers in etcd, serves, and dies only when killed.
#[tokio::test]
#[ignore = "helper: runs as the child process of another test"]
async fn child_registers_in_etcd() {
    let (Ok(etcd), Ok(dir), Ok(instance)) = (
        std::env::var("ETCD"),
        std::env::var("SCRATCH"),
        std::env::var("INSTANCE"),
    ) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let server = Server::builder(Cbor::default())
        .service(WhereServer::new(Here(instance.clone())))
        .transports(transports(&dir))
        .build();
    let shm = format!("shm://{}", dir.join(format!("{instance}.sock")).display());
    let listeners = server
        .listen(["quic://127.0.0.1:0", shm.as_str()])
        .expect("listen");
    let record = InstanceRecord::new("where", listeners.addresses())
        .instance(&instance)
        .interfaces(server.interfaces());
    let directory = EtcdDirectory::connect([etcd])
        .await
        .expect("etcd")
        .allow_local_only(true);
    let registration = directory
        .register(record, Duration::from_secs(4))
        .await
        .expect("register");
    println!("REGISTERED {}", registration.record().instance);
    server.serve_all(listeners).await.expect("serve");
}

fn start_child(etcd: &Etcd, scratch: &Scratch, instance: &str) -> ChildProcess {
    ChildProcess::start(
        &[],
        "child_registers_in_etcd",
        &[
            ("ETCD", etcd.endpoint().to_owned()),
            ("SCRATCH", scratch.0.display().to_string()),
            ("INSTANCE", instance.to_owned()),
        ],
    )
}

fn names(records: &[InstanceRecord]) -> Vec<&str> {
    records.iter().map(|r| r.instance.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_expires_and_a_watching_client_moves_to_the_next() {
    within(async {
        let etcd = Etcd::start().await.expect("etcd");
        let scratch = Scratch::new("etcd-kill");
        let registry = transports(&scratch.0);
        let mut one = start_child(&etcd, &scratch, "one");
        assert_eq!(one.line("REGISTERED ").await, "one");

        let directory = Arc::new(etcd.directory().await.expect("directory"));
        let listed = directory.resolve("where").await.expect("resolve");
        assert_eq!(names(&listed), ["one"]);
        let record = &listed[0];
        assert_eq!(record.interfaces.len(), 1);
        assert_eq!(record.interfaces[0].name, "etcd::common::Where");
        assert_eq!(record.addresses.len(), 2);

        let client = Client::builder(Cbor::default())
            .transports(registry)
            .connect_named(directory.clone(), "where")
            .await
            .expect("bind by name");
        let stub = WhereClient::new(client.clone());
        assert_eq!(stub.instance().await.expect("call"), "one");
        // The same host: shared memory, not the network.
        assert_eq!(client.address().expect("address").scheme(), "shm");
        assert_eq!(stub.reached_by().await.expect("call"), "process");

        let mut updates = directory.watch("where").await.expect("watch");
        assert_eq!(
            names(&updates.next().await.expect("first").expect("list")),
            ["one"]
        );

        // SIGKILL: no chance to withdraw. The record stays until its lease runs out.
        one.child.kill().expect("kill");
        one.child.wait().expect("reap");
        assert_eq!(
            names(&directory.resolve("where").await.expect("resolve")),
            ["one"],
            "the record went before its lease expired"
        );
        loop {
            let listed = updates.next().await.expect("update").expect("list");
            if names(&listed).is_empty() {
                break;
            }
        }

        let mut two = start_child(&etcd, &scratch, "two");
        assert_eq!(two.line("REGISTERED ").await, "two");
        // The client's session reconnects by name and finds the new instance.
        assert_eq!(stub.instance().await.expect("call after the move"), "two");
        assert_eq!(client.instance().as_deref(), Some("two"));
        assert_eq!(client.address().expect("address").scheme(), "shm");
    })
    .await
}

/// A server in this process, registered under `instance`, over QUIC on loopback.
async fn serve_here(
    directory: &EtcdDirectory,
    scratch: &Scratch,
    instance: &str,
) -> courier::directory::Registration {
    let server = Server::builder(Cbor::default())
        .service(WhereServer::new(Here(instance.to_owned())))
        .transports(transports(&scratch.0))
        .build();
    let listeners = server.listen(["quic://127.0.0.1:0"]).expect("listen");
    let address = listeners.addresses()[0]
        .clone()
        .with_param("server_name", "localhost");
    let record = InstanceRecord::new("where", [address]).instance(instance);
    tokio::spawn(async move { server.serve_all(listeners).await });
    directory
        .register(record, Duration::from_secs(10))
        .await
        .expect("register")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_instance_sends_its_watching_clients_to_another() {
    within(async {
        let etcd = Etcd::start().await.expect("etcd");
        let scratch = Scratch::new("etcd-withdraw");
        let directory = etcd
            .directory()
            .await
            .expect("directory")
            .allow_local_only(true);
        let one = serve_here(&directory, &scratch, "one").await;
        let client = Client::builder(Cbor::default())
            .transports(transports(&scratch.0))
            .connect_named(Arc::new(directory.clone()), "where")
            .await
            .expect("bind by name");
        let stub = WhereClient::new(client.clone());
        assert_eq!(stub.instance().await.expect("call"), "one");
        let _two = serve_here(&directory, &scratch, "two").await;
        assert_eq!(
            stub.instance().await.expect("call"),
            "one",
            "moved while bound"
        );

        // Callers keep calling through the move: none of their calls may fail.
        let callers: Vec<_> = (0..4)
            .map(|_| {
                let stub = stub.clone();
                tokio::spawn(async move {
                    loop {
                        match stub.instance().await {
                            Ok(instance) if instance == "two" => return Ok(()),
                            Ok(_) => {}
                            Err(e) => return Err(e),
                        }
                    }
                })
            })
            .collect();
        // "one" still serves, but leaves the directory: the client follows the directory,
        // letting the calls in flight on "one" finish there.
        one.withdraw().await.expect("withdraw");
        assert!(!names(&directory.resolve("where").await.expect("resolve")).contains(&"one"));
        for caller in callers {
            caller
                .await
                .expect("caller task")
                .expect("a call failed during the move");
        }
        assert_eq!(stub.instance().await.expect("call"), "two");
        assert_eq!(client.instance().as_deref(), Some("two"));
        assert!(client.reconnections() >= 1);
    })
    .await
}

#[tokio::test]
async fn records_that_do_not_parse_are_passed_over() {
    within(async {
        let etcd = Etcd::start().await.expect("etcd");
        let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
            .await
            .expect("etcd client");
        for (key, value) in [
            ("/courier/services/where/garbage", b"\xff not json".to_vec()),
            (
                "/courier/services/where/other",
                br#"{"service":"other","instance":"x","host":"h","addresses":["shm:///x"]}"#
                    .to_vec(),
            ),
            (
                "/courier/services/where/bad-address",
                br#"{"service":"where","instance":"y","host":"h","addresses":["no scheme"]}"#
                    .to_vec(),
            ),
            (
                "/courier/services/where/good",
                br#"{"service":"where","instance":"good","host":"h","addresses":["shm:///good"]}"#
                    .to_vec(),
            ),
        ] {
            raw.put(key, value, None).await.expect("put");
        }
        let directory = etcd.directory().await.expect("directory");
        assert_eq!(
            names(&directory.resolve("where").await.expect("resolve")),
            ["good"]
        );
        let e = directory.resolve("a/b").await.expect_err("a bad name");
        assert!(e.to_string().contains("not a service name"), "{e}");
    })
    .await
}

#[tokio::test]
async fn a_directory_for_other_hosts_refuses_loopback_addresses() {
    within(async {
        let etcd = Etcd::start().await.expect("etcd");
        let directory = etcd.directory().await.expect("directory");
        let record =
            InstanceRecord::new("where", ["quic://127.0.0.1:4433".parse().expect("address")]);
        match directory.register(record, Duration::from_secs(5)).await {
            Err(AddressError::Directory(reason)) => {
                assert!(reason.contains("loopback"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(directory
            .resolve("where")
            .await
            .expect("resolve")
            .is_empty());
    })
    .await
}

//! Two hosts on one machine: two network namespaces joined by a veth pair, made by the test
//! (it needs root and `ip`, from iproute2), each with its own host id. etcd and a server run
//! in the first; a client in the second finds the server by name and must reach it over QUIC,
//! at the address the server advertised; a client in the first must pick shared memory.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{transports, ChildProcess, Here, Scratch, WhereClient, WhereServer};
use courier::directory::{HostId, InstanceRecord, Registrar};
use courier::{Client, Server};
use courier_binding::testing::Etcd;
use courier_binding::EtcdDirectory;
use courier_cbor::Cbor;

/// Runs `ip` with `args`; panics with its output if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("cannot run `ip` (install iproute2; the test must run as root)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces and the veth pair between them; deleted when dropped, test failed or not.
struct Hosts {
    a: String,
    b: String,
    a_ip: String,
    b_ip: String,
}

impl Hosts {
    fn make() -> Hosts {
        let id = std::process::id();
        let hosts = Hosts {
            a: format!("courier-a-{id}"),
            b: format!("courier-b-{id}"),
            a_ip: format!("10.{}.{}.1", 200 + id % 50, (id / 50) % 250),
            b_ip: format!("10.{}.{}.2", 200 + id % 50, (id / 50) % 250),
        };
        hosts.remove();
        let (va, vb) = (
            format!("cva{}", id % 1_000_000),
            format!("cvb{}", id % 1_000_000),
        );
        ip(&["netns", "add", &hosts.a]);
        ip(&["netns", "add", &hosts.b]);
        ip(&[
            "link", "add", &va, "netns", &hosts.a, "type", "veth", "peer", "name", &vb, "netns",
            &hosts.b,
        ]);
        for (ns, dev, addr) in [(&hosts.a, &va, &hosts.a_ip), (&hosts.b, &vb, &hosts.b_ip)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    fn remove(&self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove();
    }
}

#[test]
fn across_hosts_quic_within_a_host_shared_memory() {
    let hosts = Hosts::make();
    let scratch = Scratch::new("hosts");
    let _ = transports(&scratch.0); // the certificate every process of the test uses
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            // Everything on host A starts from a process in namespace A.
            let mut a = ChildProcess::start(
                &["ip", "netns", "exec", &hosts.a],
                "host_a_orchestrates",
                &[
                    ("SCRATCH", scratch.0.display().to_string()),
                    ("HOST_A_IP", hosts.a_ip.clone()),
                    ("NETNS_B", hosts.b.clone()),
                ],
            );
            let advertised = a.line("ADVERTISED ").await;
            let from_b = a.line("FROM B ").await;
            let from_a = a.line("FROM A ").await;
            let quic = advertised
                .split(' ')
                .find(|s| s.starts_with("quic://"))
                .expect("a QUIC address advertised");
            assert!(
                quic.starts_with(&format!("quic://{}:", hosts.a_ip)),
                "{advertised}"
            );
            assert_eq!(from_b, format!("{quic} network"), "the client on host B");
            let shm = advertised
                .split(' ')
                .find(|s| s.starts_with("shm://"))
                .expect("a shared-memory address advertised");
            assert_eq!(from_a, format!("{shm} process"), "the client on host A");
            assert_eq!(a.line("DONE").await, "");
        })
        .await
        .expect("the test took over 120 s");
    });
}

/// Host A: etcd and the server, then a client on each host; reports what each chose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: runs as the child process of another test"]
async fn host_a_orchestrates() {
    let (Ok(dir), Ok(a_ip), Ok(netns_b)) = (
        std::env::var("SCRATCH"),
        std::env::var("HOST_A_IP"),
        std::env::var("NETNS_B"),
    ) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let etcd = Etcd::start_on(a_ip.parse().expect("ip"))
        .await
        .expect("etcd");
    let server = Server::builder(Cbor::default())
        .service(WhereServer::new(Here("a".into())))
        .transports(transports(&dir))
        .build();
    let shm = format!("shm://{}", dir.join("a.sock").display());
    let listeners = server
        .listen([format!("quic://{a_ip}:0"), shm])
        .expect("listen");
    let addresses: Vec<_> = listeners
        .addresses()
        .into_iter()
        .map(|a| match a.scheme() {
            "quic" => a.with_param("server_name", "courier.test"),
            _ => a,
        })
        .collect();
    let record = InstanceRecord::new("where", addresses.clone())
        .host(HostId::new("host-a"))
        .interfaces(server.interfaces());
    // The default directory: loopback addresses would be refused, and none is advertised.
    let directory = EtcdDirectory::connect([etcd.endpoint()])
        .await
        .expect("etcd");
    let _registration = directory
        .register(record, Duration::from_secs(10))
        .await
        .expect("register");
    tokio::spawn(async move { server.serve_all(listeners).await });
    let shown: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    println!("ADVERTISED {}", shown.join(" "));

    let env = |host: &str| {
        vec![
            ("SCRATCH", dir.display().to_string()),
            ("ETCD", etcd.endpoint().to_owned()),
            (courier::directory::HOST_ID_ENV, host.to_owned()),
        ]
    };
    let mut b = ChildProcess::start(
        &["ip", "netns", "exec", &netns_b],
        "a_client_reports",
        &env("host-b"),
    );
    println!("FROM B {}", b.line("CHOSE ").await);
    let mut a = ChildProcess::start(&[], "a_client_reports", &env("host-a"));
    println!("FROM A {}", a.line("CHOSE ").await);
    // Stop etcd before saying so: the parent kills this process once it reads DONE, and a
    // child of a killed process lives on.
    drop(etcd);
    println!("DONE");
}

/// A client on either host: finds `where` by name and says which address it chose and how the
/// server saw it.
#[tokio::test]
#[ignore = "helper: runs as the child process of another test"]
async fn a_client_reports() {
    let (Ok(dir), Ok(etcd)) = (std::env::var("SCRATCH"), std::env::var("ETCD")) else {
        return;
    };
    let directory = Arc::new(EtcdDirectory::connect([etcd]).await.expect("etcd"));
    let client = Client::builder(Cbor::default())
        .transports(transports(std::path::Path::new(&dir)))
        .connect_named(directory, "where")
        .await
        .expect("bind by name");
    let reached_by = WhereClient::new(client.clone())
        .reached_by()
        .await
        .expect("call");
    println!(
        "CHOSE {} {reached_by}",
        client.address().expect("an address")
    );
}

//! A UDP relay on loopback between a real QUIC client and a real server that drops,
//! duplicates and reorders datagrams on a seeded schedule, and can cut the path: the network
//! faults this machine cannot make with `netem`, for tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use courier::testing::faulty::Seeded;
use tokio::net::UdpSocket;

/// What the relay does to datagrams, each a probability per datagram.
#[derive(Debug, Clone, Copy)]
pub struct Weather {
    pub seed: u64,
    pub drop: f64,
    pub duplicate: f64,
    pub reorder: f64,
}

/// Datagrams seen and what became of them.
#[derive(Debug, Default)]
pub struct Counts {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub reordered: AtomicU64,
}

/// A running relay; dropping it stops it.
pub struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    heal: Arc<AtomicBool>,
    pub counts: Arc<Counts>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// One direction's weather: decides each datagram's fate and holds a reordered one back until
/// the next datagram has gone.
struct Lane {
    weather: Weather,
    dice: Arc<Seeded>,
    counts: Arc<Counts>,
    cut: Arc<AtomicBool>,
    held: Option<Vec<u8>>,
    /// Set by [`Relay::cut_until_reconnect`]: the next QUIC Initial packet from a client heals
    /// the cut.
    heal: Arc<AtomicBool>,
}

/// Whether `datagram` is a QUIC v1 Initial packet: a long header (bit 7) with the fixed bit
/// (bit 6) and packet type 0 (bits 5–4).
fn is_initial(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0xF0 == 0xC0)
}

impl Lane {
    /// The datagrams to send now for `datagram`, in order.
    fn pass(&mut self, datagram: Vec<u8>) -> Vec<Vec<u8>> {
        if self.cut.load(Ordering::Acquire)
            && is_initial(&datagram)
            && self.heal.swap(false, Ordering::AcqRel)
        {
            self.cut.store(false, Ordering::Release);
        }
        if self.cut.load(Ordering::Acquire) {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
            return Vec::new();
        }
        let w = self.weather;
        let x = self.dice.next_f64();
        let mut out = Vec::new();
        if x < w.drop {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        } else if x < w.drop + w.duplicate {
            self.counts.duplicated.fetch_add(1, Ordering::Relaxed);
            out.push(datagram.clone());
            out.push(datagram);
        } else if x < w.drop + w.duplicate + w.reorder && self.held.is_none() {
            self.counts.reordered.fetch_add(1, Ordering::Relaxed);
            self.held = Some(datagram);
            return out;
        } else {
            out.push(datagram);
        }
        self.counts.forwarded.fetch_add(1, Ordering::Relaxed);
        // A datagram held back goes after the one that overtook it.
        out.extend(self.held.take());
        out
    }
}

impl Relay {
    /// Starts a relay in front of the server at `server`.
    pub async fn start(server: SocketAddr, weather: Weather) -> Relay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let heal = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let dice = Arc::new(Seeded::new(weather.seed));
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        // One upstream socket per client address, so the server sees each client apart.
        let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        let mut to_server = Lane {
            weather,
            dice: Arc::clone(&dice),
            counts: Arc::clone(&counts),
            cut: Arc::clone(&cut),
            held: None,
            heal: Arc::clone(&heal),
        };
        let front_task = {
            let tasks = Arc::clone(&tasks);
            let front = Arc::clone(&front);
            let cut = Arc::clone(&cut);
            let heal = Arc::clone(&heal);
            let counts = Arc::clone(&counts);
            let dice = Arc::clone(&dice);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    let Ok((n, client)) = front.recv_from(&mut buf).await else {
                        return;
                    };
                    let existing = upstreams.lock().unwrap().get(&client).cloned();
                    let upstream = match existing {
                        Some(u) => u,
                        None => {
                            let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                            u.connect(server).await.unwrap();
                            upstreams.lock().unwrap().insert(client, Arc::clone(&u));
                            // Replies from the server to this client, with their own weather.
                            let mut back = Lane {
                                weather,
                                dice: Arc::clone(&dice),
                                counts: Arc::clone(&counts),
                                cut: Arc::clone(&cut),
                                held: None,
                                heal: Arc::clone(&heal),
                            };
                            let front = Arc::clone(&front);
                            let reader = Arc::clone(&u);
                            let task = tokio::spawn(async move {
                                let mut buf = vec![0u8; 65_536];
                                while let Ok(n) = reader.recv(&mut buf).await {
                                    for d in back.pass(buf[..n].to_vec()) {
                                        let _ = front.send_to(&d, client).await;
                                    }
                                }
                            });
                            tasks.lock().unwrap().push(task);
                            u
                        }
                    };
                    for d in to_server.pass(buf[..n].to_vec()) {
                        let _ = upstream.send(&d).await;
                    }
                }
            })
        };
        tasks.lock().unwrap().push(front_task);
        Relay {
            addr,
            cut,
            heal,
            counts,
            tasks,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the path both ways (every datagram is lost) until [`Relay::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
    }

    /// Cuts the path until a client opens a new connection (its first Initial packet goes
    /// through): the connections open now are lost for good, as behind a NAT that forgot them.
    pub fn cut_until_reconnect(&self) {
        self.heal.store(true, Ordering::Release);
        self.cut.store(true, Ordering::Release);
    }

    /// Whether the path is cut now.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    /// Lets datagrams through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

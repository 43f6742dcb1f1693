//! A link that loses, duplicates and delays frames, and can be cut: for testing what callers
//! see when the network misbehaves, over any transport.
//!
//! [`FaultyConnector`] wraps a transport's connector; every link it opens passes its frames
//! through a seeded schedule of faults in both directions (the client's sends and the frames it
//! receives), so a failing test can be replayed with the same seed. The handshake's two
//! messages always pass: the faults start with the first frame.
//!
//! ```
//! use courier::testing::faulty::{Faults, FaultyConnector};
//! use courier::transport::mem;
//! let faults = Faults::new(7).drop(0.05).duplicate(0.01);
//! let connector = FaultyConnector::new(mem::Dialer::new("faulty-example"), faults);
//! let cuts = connector.cuts(); // cuts.cut() closes the link open now
//! # drop((connector, cuts));
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::sync::Notify;

use crate::error::TransportError;
use crate::transport::{heap_buffer, take_heap_buffer, FrameBuf, Link, LinkRx, LinkTx};
use crate::transport::{Connector, ReplyReader};

/// What goes wrong, and how often: each a probability per frame, drawn from a generator seeded
/// with `seed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    seed: u64,
    drop: f64,
    duplicate: f64,
    delay: f64,
    delay_by: Duration,
}

impl Faults {
    /// No faults yet, with the schedule's seed.
    pub fn new(seed: u64) -> Self {
        Faults {
            seed,
            drop: 0.0,
            duplicate: 0.0,
            delay: 0.0,
            delay_by: Duration::from_millis(5),
        }
    }

    /// Loses each frame with probability `p`.
    pub fn drop(mut self, p: f64) -> Self {
        self.drop = p;
        self
    }

    /// Delivers each frame twice with probability `p`.
    pub fn duplicate(mut self, p: f64) -> Self {
        self.duplicate = p;
        self
    }

    /// Holds each frame this side sends back by `by` with probability `p`, so that later
    /// frames overtake it.
    pub fn delay(mut self, p: f64, by: Duration) -> Self {
        self.delay = p;
        self.delay_by = by;
        self
    }
}

/// What happened to the frames so far, for a test to check that its faults were exercised.
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// Frames passed through.
    pub passed: AtomicU64,
    /// Frames lost.
    pub dropped: AtomicU64,
    /// Frames delivered twice.
    pub duplicated: AtomicU64,
    /// Frames held back.
    pub delayed: AtomicU64,
    /// Links cut.
    pub cuts: AtomicU64,
}

/// The fate of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Pass,
    Drop,
    Duplicate,
    Delay,
}

/// A seeded source of numbers in `[0, 1)` (splitmix64), shared by threads: a fault schedule
/// that its seed alone reproduces. Also for other fault injectors (the QUIC tests' UDP relay).
#[derive(Debug)]
pub struct Seeded(AtomicU64);

impl Seeded {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Seeded(AtomicU64::new(seed))
    }

    /// The next number, in `[0, 1)`.
    pub fn next_f64(&self) -> f64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The seeded schedule shared by both directions of every link of one connector.
#[derive(Debug)]
struct Schedule {
    faults: Faults,
    dice: Seeded,
    counts: Arc<FaultCounts>,
}

impl Schedule {
    fn fate(&self, can_delay: bool) -> Fate {
        let f = &self.faults;
        let x = self.dice.next_f64();
        let counts = &self.counts;
        let fate = if x < f.drop {
            Fate::Drop
        } else if x < f.drop + f.duplicate {
            Fate::Duplicate
        } else if can_delay && x < f.drop + f.duplicate + f.delay {
            Fate::Delay
        } else {
            Fate::Pass
        };
        let counter = match fate {
            Fate::Pass => &counts.passed,
            Fate::Drop => &counts.dropped,
            Fate::Duplicate => &counts.duplicated,
            Fate::Delay => &counts.delayed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        fate
    }
}

/// Cuts the links of a [`FaultyConnector`]: the link open now closes in both directions, as
/// if the network between the two sides went away; later links are not affected.
#[derive(Debug, Clone, Default)]
pub struct Cuts {
    current: Arc<Mutex<Option<Arc<Cut>>>>,
    counts: Arc<FaultCounts>,
}

impl Cuts {
    /// Cuts the link open now, if any.
    pub fn cut(&self) {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(cut) = current {
            cut.fire();
            self.counts.cuts.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The cut of one link.
#[derive(Debug, Default)]
struct Cut {
    fired: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Cut {
    fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

/// A [`Connector`] whose links misbehave as its [`Faults`] say. Its clones share the schedule
/// and the counts.
#[derive(Debug, Clone)]
pub struct FaultyConnector<C> {
    inner: C,
    schedule: Arc<Schedule>,
    cuts: Cuts,
}

impl<C> FaultyConnector<C> {
    /// Wraps `inner`'s links in `faults`.
    pub fn new(inner: C, faults: Faults) -> Self {
        let counts = Arc::new(FaultCounts::default());
        FaultyConnector {
            inner,
            schedule: Arc::new(Schedule {
                dice: Seeded::new(faults.seed),
                faults,
                counts: Arc::clone(&counts),
            }),
            cuts: Cuts {
                current: Arc::default(),
                counts,
            },
        }
    }

    /// A handle that cuts the link open now.
    pub fn cuts(&self) -> Cuts {
        self.cuts.clone()
    }

    /// What has happened to the frames so far.
    pub fn counts(&self) -> Arc<FaultCounts> {
        Arc::clone(&self.schedule.counts)
    }
}

impl<C: Connector> Connector for FaultyConnector<C> {
    async fn connect(&self) -> Result<Link, TransportError> {
        let Link { tx, rx, peer } = self.inner.connect().await?;
        let cut = Arc::new(Cut::default());
        *self.cuts.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&cut));
        Ok(Link {
            tx: Box::new(FaultyTx {
                inner: Arc::from(tx),
                schedule: Arc::clone(&self.schedule),
                cut: Arc::clone(&cut),
                handshake_sent: std::sync::atomic::AtomicBool::new(false),
            }),
            rx: Box::new(FaultyRx {
                inner: rx,
                schedule: Arc::clone(&self.schedule),
                cut,
                handshake_received: false,
                again: VecDeque::new(),
            }),
            peer,
        })
    }
}

#[derive(Debug)]
struct FaultyTx {
    inner: Arc<dyn LinkTx>,
    schedule: Arc<Schedule>,
    cut: Arc<Cut>,
    handshake_sent: std::sync::atomic::AtomicBool,
}

/// Copies `bytes` into a buffer of `tx` and sends it.
async fn resend(tx: &dyn LinkTx, bytes: &[u8]) -> Result<(), TransportError> {
    let mut buf = tx.buffer(bytes.len()).await?;
    buf.put_slice(bytes);
    tx.send(buf).await
}

impl FaultyTx {
    /// The frame's bytes and its fate (the handshake message always passes).
    fn judge(&self, message: Box<dyn FrameBuf>) -> Result<(BytesMut, Fate), TransportError> {
        let bytes = take_heap_buffer(message, "faulty")?;
        if self.cut.fired() {
            return Err(TransportError::Closed);
        }
        if !self.handshake_sent.swap(true, Ordering::AcqRel) {
            return Ok((bytes, Fate::Pass));
        }
        Ok((bytes, self.schedule.fate(true)))
    }

    fn hold_back(&self, bytes: BytesMut) {
        let inner = Arc::clone(&self.inner);
        let by = self.schedule.faults.delay_by;
        tokio::spawn(async move {
            tokio::time::sleep(by).await;
            let _ = resend(&*inner, &bytes).await;
        });
    }
}

impl LinkTx for FaultyTx {
    fn buffer(&self, size_hint: usize) -> BoxFuture<'_, Result<Box<dyn FrameBuf>, TransportError>> {
        // On the heap, so that the frame can be sent again or later: the inner transport's
        // buffer may be memory it cannot hold for long (a ring's reservation).
        let buf = heap_buffer(size_hint);
        Box::pin(async move { Ok(buf) })
    }

    fn try_buffer(&self, size_hint: usize) -> Option<Box<dyn FrameBuf>> {
        Some(heap_buffer(size_hint))
    }

    fn send(&self, message: Box<dyn FrameBuf>) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(async move {
            let (bytes, fate) = self.judge(message)?;
            match fate {
                Fate::Pass => resend(&*self.inner, &bytes).await,
                Fate::Drop => Ok(()),
                Fate::Duplicate => {
                    resend(&*self.inner, &bytes).await?;
                    resend(&*self.inner, &bytes).await
                }
                Fate::Delay => {
                    self.hold_back(bytes);
                    Ok(())
                }
            }
        })
    }

    fn send_call(
        &self,
        message: Box<dyn FrameBuf>,
    ) -> BoxFuture<'_, Result<Option<ReplyReader>, TransportError>> {
        Box::pin(async move {
            let (bytes, fate) = self.judge(message)?;
            let send_call = |bytes: &[u8]| {
                let inner = Arc::clone(&self.inner);
                let bytes = Bytes::copy_from_slice(bytes);
                async move {
                    let mut buf = inner.buffer(bytes.len()).await?;
                    buf.put_slice(&bytes);
                    inner.send_call(buf).await
                }
            };
            match fate {
                Fate::Pass => send_call(&bytes).await,
                // Lost: no reply will come, as when the network loses a request.
                Fate::Drop => Ok(None),
                Fate::Duplicate => {
                    let first = send_call(&bytes).await?;
                    // The copy's reply (if its transport reads replies per call) is read on a
                    // task of its own and reaches the connection like any stray frame.
                    if let Some(second) = send_call(&bytes).await? {
                        tokio::spawn(second);
                    }
                    Ok(first)
                }
                Fate::Delay => {
                    let later = send_call(&bytes);
                    let by = self.schedule.faults.delay_by;
                    tokio::spawn(async move {
                        tokio::time::sleep(by).await;
                        if let Ok(Some(reader)) = later.await {
                            reader.await;
                        }
                    });
                    Ok(None)
                }
            }
        })
    }

    fn close(&self) {
        self.inner.close();
    }
}

#[derive(Debug)]
struct FaultyRx {
    inner: Box<dyn LinkRx>,
    schedule: Arc<Schedule>,
    cut: Arc<Cut>,
    handshake_received: bool,
    /// Duplicates still to deliver.
    again: VecDeque<Bytes>,
}

impl LinkRx for FaultyRx {
    fn recv(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, TransportError>> {
        Box::pin(async move {
            loop {
                if self.cut.fired() {
                    return Ok(None);
                }
                if let Some(copy) = self.again.pop_front() {
                    return Ok(Some(copy));
                }
                let cut = Arc::clone(&self.cut);
                let fired = cut.notify.notified();
                let frame = tokio::select! {
                    frame = self.inner.recv() => frame?,
                    () = fired => return Ok(None),
                };
                let Some(frame) = frame else {
                    return Ok(None);
                };
                if !self.handshake_received {
                    self.handshake_received = true;
                    return Ok(Some(frame));
                }
                match self.schedule.fate(false) {
                    Fate::Drop => continue,
                    Fate::Duplicate => {
                        self.again.push_back(frame.clone());
                        return Ok(Some(frame));
                    }
                    Fate::Pass | Fate::Delay => return Ok(Some(frame)),
                }
            }
        })
    }

    fn frame_limit(&self) -> Option<usize> {
        self.inner.frame_limit()
    }

    // Push delivery is not passed on: every frame must cross `recv` to meet its fate.
}

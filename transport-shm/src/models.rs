//! Loom models of the shared-memory transport's waiting code: every interleaving loom explores
//! (within a preemption bound) must hand every frame over exactly once, in order, and wake
//! whoever must wake. A lost wake-up leaves every thread blocked, which loom reports as a
//! deadlock.
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p courier-shm --release --lib loom
//! ```
//!
//! The rings' own code runs under the models: with `--cfg loom` their control words are
//! loom's atomics ([`ring::loom_header`]). The parties around them (the peer's sender, the
//! reading task, a caller that looks for its reply) are written here step for step as
//! `link.rs` and `reader.rs` take them, with each doorbell an eventfd-like [`Bell`]: a model
//! of the protocol, which those files must keep following (their comments point here).

use std::sync::Arc;

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Condvar, Mutex};

use crate::ring::{self, Consumer, Producer, HEADER};

/// An eventfd: ringing sets it, a wait returns at once if it was set since the last wait, and
/// clears it.
#[derive(Default)]
struct Bell {
    rung: Mutex<bool>,
    ringing: Condvar,
}

impl Bell {
    fn ring(&self) {
        *self.rung.lock().unwrap() = true;
        self.ringing.notify_one();
    }

    fn wait(&self) {
        let mut rung = self.rung.lock().unwrap();
        while !*rung {
            rung = self.ringing.wait(rung).unwrap();
        }
        *rung = false;
    }
}

#[repr(C, align(64))]
struct Line([u8; 64]);

/// One ring's memory, with loom's atomics in its header.
struct Segment {
    lines: Box<[Line]>,
    capacity: usize,
}

// SAFETY: the segment is plain memory; the ends and the models only reach it through the
// ring's own code, whose control words are loom's atomics.
unsafe impl Send for Segment {}
// SAFETY: as above.
unsafe impl Sync for Segment {}

impl Segment {
    fn new(capacity: usize) -> Arc<Segment> {
        let lines = (0..(HEADER + capacity) / 64)
            .map(|_| Line([0; 64]))
            .collect();
        let segment = Segment { lines, capacity };
        // SAFETY: fresh, 64-aligned memory of HEADER + capacity bytes that nothing uses yet.
        unsafe { ring::loom_header(segment.base()) };
        Arc::new(segment)
    }

    fn base(&self) -> *mut u8 {
        self.lines.as_ptr().cast_mut().cast()
    }

    fn ends(&self, max_message: usize) -> (Producer, Consumer) {
        // SAFETY: the segment outlives both ends (each model keeps it until its threads are
        // joined), one producer and one consumer.
        unsafe {
            (
                Producer::new(self.base(), self.capacity).unwrap(),
                Consumer::new(self.base(), self.capacity, max_message).unwrap(),
            )
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: the header was placed by `Segment::new`; the ends are gone with the threads.
        unsafe { ring::loom_header_drop(self.base()) };
    }
}

/// Runs `f` under every interleaving with at most `preemptions` threads switched against
/// their will (`LOOM_MAX_PREEMPTIONS` overrides it, to look deeper on purpose).
fn model(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(preemptions);
    }
    builder.check(f);
}

/// Frame `i` of a model: its number, padded to a length that varies, so that records of
/// several sizes wrap around a small ring.
fn frame(i: u8) -> Vec<u8> {
    vec![i; 8 + 8 * usize::from(i % 2)]
}

/// A sender and a receiver on one ring of 64 bytes, which three frames of 16 and 24 bytes
/// (records of 24 and 32) fill and wrap: the receiver sleeps when the ring is empty, the
/// sender when it is full. Each says so with its flag and looks once more before waiting
/// for the other's doorbell; the other rings only when the flag is up. This is
/// `End::until_room` and `End::wake_peer` on the sending side, `receive`'s sleep and
/// `State::look` on the receiving side.
#[test]
fn loom_ring_hands_every_frame_over_once_and_wakes_the_sleeping_side() {
    const FRAMES: u8 = 3;
    model(3, || {
        let segment = Segment::new(64);
        let (mut producer, mut consumer) = segment.ends(1 << 10);
        let (receiver_bell, sender_bell) = (Arc::new(Bell::default()), Arc::new(Bell::default()));
        let sender = loom::thread::spawn({
            let (receiver_bell, sender_bell) =
                (Arc::clone(&receiver_bell), Arc::clone(&sender_bell));
            move || {
                for i in 0..FRAMES {
                    let frame = frame(i);
                    while !producer.try_push(&frame, false).unwrap() {
                        // Full: say so, look again (room freed before the flag was seen rings
                        // nothing), then sleep until the receiver rings.
                        producer.set_waiting(true);
                        if producer.try_push(&frame, false).unwrap() {
                            break;
                        }
                        sender_bell.wait();
                    }
                    producer.set_waiting(false);
                    if producer.consumer_sleeping() {
                        receiver_bell.ring();
                    }
                }
            }
        });
        // `State::look`: take a frame, then ring the sender if it waits for room.
        let take = |consumer: &mut Consumer| {
            let message = consumer.try_pop().unwrap();
            if message.is_some() && consumer.producer_waiting() {
                sender_bell.ring();
            }
            message
        };
        let mut received = Vec::new();
        while received.len() < usize::from(FRAMES) {
            if let Some(message) = take(&mut consumer) {
                received.push(message);
                continue;
            }
            consumer.set_sleeping(true);
            match take(&mut consumer) {
                Some(message) => received.push(message),
                None => receiver_bell.wait(),
            }
            consumer.set_sleeping(false);
        }
        sender.join().unwrap();
        let expected: Vec<Vec<u8>> = (0..FRAMES).map(frame).collect();
        assert_eq!(received, expected);
        assert_eq!(consumer.try_pop().unwrap(), None);
        drop(segment);
    });
}

/// Frames a reader takes in one drain in the hand-off models: one, so that two frames
/// already cross a batch's end (the real batch is 64 frames, more than a model can send).
const BATCH: usize = 1;

/// The receiving ring and who reads it: `reader.rs`'s `Reading`, with `State` reduced to
/// the consumer and the frames delivered (to the engine, in the order they were taken).
struct Reading {
    state: Mutex<(Consumer, Vec<Vec<u8>>)>,
    /// Callers looking at the ring now (`Reading::spinning`).
    spinning: AtomicUsize,
    /// What wakes the sleeping reading task: the peer's doorbell (an eventfd) and the callers'
    /// nudge (`Reading::wake`, a tokio `Notify`), which its `select!` waits on together.
    /// Each wake-up is followed by a full look, so one bell for both loses nothing.
    task_bell: Bell,
    frames: usize,
}

impl Reading {
    fn new(consumer: Consumer, frames: usize) -> Arc<Reading> {
        Arc::new(Reading {
            state: Mutex::new((consumer, Vec::new())),
            spinning: AtomicUsize::new(0),
            task_bell: Bell::default(),
            frames,
        })
    }

    /// `State::drain`: delivers up to a batch; true if it delivered any.
    fn drain(state: &mut (Consumer, Vec<Vec<u8>>)) -> bool {
        let mut any = false;
        for _ in 0..BATCH {
            match state.0.try_pop().unwrap() {
                Some(frame) => {
                    state.1.push(frame);
                    any = true;
                }
                None => break,
            }
        }
        any
    }

    /// The reading task, turn by turn as `receive` takes them in `Wait::Park` (the other
    /// modes only look longer before the same sleep). It returns once every frame is
    /// delivered (the model's end, not the protocol's); asleep while a frame waits that
    /// nobody will ring for, it is loom's deadlock.
    fn reading_task(&self) {
        loop {
            // `read_once`.
            let mut state = self.state.lock().unwrap();
            if Reading::drain(&mut state) {
                continue;
            }
            if state.1.len() == self.frames {
                return;
            }
            // Going to sleep: unless callers look, say so; then look once more.
            if self.spinning.load(Ordering::SeqCst) == 0 {
                state.0.set_sleeping(true);
            }
            drop(state);
            let mut state = self.state.lock().unwrap();
            if Reading::drain(&mut state) {
                state.0.set_sleeping(false);
                continue;
            }
            if state.1.len() == self.frames {
                return;
            }
            drop(state);
            self.task_bell.wait();
            let state = self.state.lock().unwrap();
            state.0.set_sleeping(false);
            if state.1.len() == self.frames {
                return;
            }
        }
    }

    /// A caller looking for its reply, as `OwnReply` polls and stops: counted while it
    /// looks, it clears the doorbell flag at its first look, takes what it finds, and gives
    /// up after `looks` tries (its budget). The last caller to stop hands the ring back to
    /// the doorbell: it raises the flag and drains once more, or nudges the reading task if
    /// that one holds the ring.
    fn caller(&self, looks: usize) {
        self.spinning.fetch_add(1, Ordering::SeqCst);
        let mut cleared = false;
        for _ in 0..looks {
            if let Ok(mut state) = self.state.try_lock() {
                if !cleared {
                    cleared = true;
                    state.0.set_sleeping(false);
                }
                Reading::drain(&mut state);
            }
        }
        if self.spinning.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        let Ok(mut state) = self.state.try_lock() else {
            self.task_bell.ring();
            return;
        };
        state.0.set_sleeping(true);
        if Reading::drain(&mut state) {
            // The drain may have stopped at a batch's end with frames behind it, which were
            // published while the flag was down: nobody will ring for them.
            self.task_bell.ring();
        }
    }
}

/// The peer: publishes `frames` frames, ringing the doorbell when the flag says nobody looks
/// (`Tx::try_send_shared`, `End::wake_peer`).
fn peer(mut producer: Producer, reading: &Reading, frames: u8) {
    for i in 0..frames {
        assert!(producer.try_push(&frame(i), false).unwrap());
        if producer.consumer_sleeping() {
            reading.task_bell.ring();
        }
    }
}

/// Runs the reading task, `callers` callers that look `looks` times each, and the peer with
/// `frames` frames; every frame must be delivered once, in order.
fn hand_off(preemptions: usize, callers: usize, looks: usize, frames: u8) {
    model(preemptions, move || {
        let segment = Segment::new(256);
        let (producer, consumer) = segment.ends(1 << 10);
        let reading = Reading::new(consumer, usize::from(frames));
        let mut threads = Vec::new();
        threads.push(loom::thread::spawn({
            let reading = Arc::clone(&reading);
            move || peer(producer, &reading, frames)
        }));
        for _ in 0..callers {
            let reading = Arc::clone(&reading);
            threads.push(loom::thread::spawn(move || reading.caller(looks)));
        }
        let task = loom::thread::spawn({
            let reading = Arc::clone(&reading);
            move || reading.reading_task()
        });
        for thread in threads {
            thread.join().unwrap();
        }
        // The peer and the callers are done. With every frame delivered, the reading task
        // may be asleep with nothing to do, as it would be until the next frame: end it. With
        // a frame left, it must deliver it without help.
        if reading.state.lock().unwrap().1.len() == usize::from(frames) {
            reading.task_bell.ring();
        }
        task.join().unwrap();
        let state = reading.state.lock().unwrap();
        let expected: Vec<Vec<u8>> = (0..frames).map(frame).collect();
        assert_eq!(state.1, expected);
        drop(state);
        drop(reading);
        drop(segment);
    });
}

/// One caller looks beside the reading task: the task sleeps without the doorbell while the
/// caller looks, and the caller hands the ring back when it stops.
#[test]
fn loom_a_caller_that_stops_looking_hands_the_ring_back() {
    hand_off(3, 1, 1, 2);
}

/// Two callers: the last to stop hands the ring back, whoever held it meanwhile.
#[test]
fn loom_the_last_of_two_callers_hands_the_ring_back() {
    hand_off(2, 2, 1, 2);
}

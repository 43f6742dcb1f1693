//! A single-producer, single-consumer ring of records in memory shared with another process.
//!
//! This is the data path of the shared-memory transport, written without any I/O so that it can
//! be tested on its own. Each direction of a connection has one ring; one process produces into
//! it and the other consumes.
//!
//! # Layout
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | `head`: bytes consumed so far (written by the consumer) |
//! | 64 | 8 | `tail`: bytes produced so far (written by the producer) |
//! | 128 | 4 | `sleeping`: nonzero while the consumer waits to be woken |
//! | 132 | 4 | `waiting`: nonzero while the producer waits for room |
//! | 192 | capacity | records |
//!
//! `head`, `tail` and `sleeping` sit on cache lines of their own, so that the two sides do not
//! bounce one line between cores while both are busy. Positions only grow; a record starts at
//! `position % capacity`.
//!
//! A record is an 8-byte header (`u32` length, `u32` flags) and its bytes, padded to 8. A record
//! never wraps: when the space before the end of the ring is too short, the producer writes a
//! *skip* record there and starts again at offset 0. A message longer than one record can hold is
//! sent as several records, all but the last flagged *more*, so a frame larger than the ring
//! still goes through.
//!
//! # Hostile memory
//!
//! The other process may write anything anywhere in the segment at any time. Nothing read from
//! it is trusted: `head` and `tail` must stay within one capacity of what this side knows and
//! must never go backwards, a record's length must fit what was published, flags must be known.
//! Any violation is [`Corrupt`], after which the ring must not be used again. Bytes are copied
//! out of the ring before anyone looks at them, so a peer changing them afterwards changes
//! nothing.

// Under loom the control words are loom's atomics, placed in the header by
// [`loom_header`], so that its models run this very code.
#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Bytes before the records.
pub const HEADER: usize = 192;
const HEAD_AT: usize = 0;
const TAIL_AT: usize = 64;
const SLEEPING_AT: usize = 128;
#[cfg(not(loom))]
const WAITING_AT: usize = 132;
/// Loom's atomics are larger than four bytes: the flag gets a slot of its own.
#[cfg(loom)]
const WAITING_AT: usize = 160;
/// Size of a record's header.
const RECORD_HEADER: usize = 8;
/// The record continues in the next one.
const MORE: u32 = 1;
/// Nothing here: the next record starts at offset 0.
const SKIP: u32 = 2;

/// How much of a message over the consumer's limit it still returns: a frame header's worth.
pub const OVERSIZED_PREFIX: usize = 32;

/// The peer broke the ring's rules; the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the shared ring is corrupt: {0}")]
pub struct Corrupt(pub &'static str);

fn padded(len: usize) -> usize {
    (len + 7) & !7
}

/// The shared memory one ring lives in.
///
/// Holds a raw pointer: the mapping must outlive the ring, which the transport guarantees by
/// keeping the mapping alive as long as either end of the ring.
#[derive(Debug)]
struct Region {
    base: *mut u8,
    capacity: usize,
}

// SAFETY: the region is plain memory mapped for the life of the connection; all access to the
// control words goes through atomics, and record bytes are only copied with bounds checked
// against `capacity`. Moving the handle to another thread changes none of that.
unsafe impl Send for Region {}

impl Region {
    /// # Safety
    ///
    /// `base` must point to `HEADER + capacity` bytes, aligned to 64, readable and writable, that
    /// stay mapped as long as the returned value lives.
    unsafe fn new(base: *mut u8, capacity: usize) -> Result<Region, Corrupt> {
        if capacity < 64 || !capacity.is_power_of_two() || base.align_offset(64) != 0 {
            return Err(Corrupt(
                "ring capacity must be a power of two of at least 64",
            ));
        }
        Ok(Region { base, capacity })
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        // SAFETY: `at` is one of the header offsets (< HEADER, 8-aligned); `base` is 64-aligned
        // and valid for HEADER bytes (Region::new's contract), so the pointer is aligned and in
        // bounds. Other processes only ever access these words atomically too.
        unsafe { &*self.base.add(at).cast::<AtomicU64>() }
    }

    fn flag(&self) -> &AtomicU32 {
        self.flag_at(SLEEPING_AT)
    }

    fn flag_at(&self, at: usize) -> &AtomicU32 {
        // SAFETY: as for `word`: `at` is 128 or 132, within the header and 4-aligned.
        unsafe { &*self.base.add(at).cast::<AtomicU32>() }
    }

    /// Writes `bytes` at `offset` in the record area. The caller checked the bounds.
    fn write(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.capacity);
        // SAFETY: the range is inside the record area (asserted above); the consumer does not
        // read it until the tail that covers it is published, and we never create a reference
        // to shared bytes, only copy into them.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.add(HEADER + offset),
                bytes.len(),
            )
        }
    }

    /// Copies `out.len()` bytes from `offset` in the record area. The caller checked the bounds.
    fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.capacity);
        // SAFETY: the range is inside the record area (asserted above). A hostile producer may
        // change these bytes while we copy them; that can only give us other bytes, which are
        // validated after the copy like any peer input. No reference to shared memory escapes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.add(HEADER + offset),
                out.as_mut_ptr(),
                out.len(),
            )
        }
    }

    /// Appends `len` bytes from `offset` in the record area to `out`, without zero-filling
    /// first. The caller checked the bounds.
    fn read_append(&self, offset: usize, len: usize, out: &mut Vec<u8>) {
        assert!(offset + len <= self.capacity);
        out.reserve(len);
        let at = out.len();
        // SAFETY: the source range is inside the record area (asserted above) and `out` has
        // room for `len` more bytes (reserved above), which the copy initialises before
        // `set_len` covers them. A hostile producer changing the source meanwhile only gives
        // us other bytes, validated later like any peer input.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.add(HEADER + offset),
                out.as_mut_ptr().add(at),
                len,
            );
            out.set_len(at + len);
        }
    }

    /// The address of `offset` in the record area, for writing a reserved record in place.
    fn record_ptr(&self, offset: usize) -> *mut u8 {
        assert!(offset <= self.capacity);
        // SAFETY: within the region (asserted above; `capacity` itself is one past the end).
        unsafe { self.base.add(HEADER + offset) }
    }

    fn record_header(&self, offset: usize) -> (u32, u32) {
        let mut h = [0u8; RECORD_HEADER];
        self.read(offset, &mut h);
        (
            u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        )
    }
}

/// Places loom's atomics for the control words in the header at `base`, all zero, for a
/// loom model; [`loom_header_drop`] drops them.
///
/// # Safety
///
/// `base` must point to [`HEADER`] writable bytes, aligned to 64, that nothing uses yet.
#[cfg(loom)]
pub unsafe fn loom_header(base: *mut u8) {
    assert!(std::mem::size_of::<AtomicU64>() <= TAIL_AT - HEAD_AT);
    assert!(std::mem::size_of::<AtomicU32>() <= WAITING_AT - SLEEPING_AT);
    assert!(WAITING_AT + std::mem::size_of::<AtomicU32>() <= HEADER);
    assert!(std::mem::align_of::<AtomicU64>() <= 64 && std::mem::align_of::<AtomicU32>() <= 32);
    // SAFETY: the offsets are within HEADER, aligned for the types (asserted above), and do
    // not overlap; the caller gives us the bytes.
    unsafe {
        base.add(HEAD_AT)
            .cast::<AtomicU64>()
            .write(AtomicU64::new(0));
        base.add(TAIL_AT)
            .cast::<AtomicU64>()
            .write(AtomicU64::new(0));
        base.add(SLEEPING_AT)
            .cast::<AtomicU32>()
            .write(AtomicU32::new(0));
        base.add(WAITING_AT)
            .cast::<AtomicU32>()
            .write(AtomicU32::new(0));
    }
}

/// Drops what [`loom_header`] placed.
///
/// # Safety
///
/// `base` must have been given to [`loom_header`], and no end or gauge of its ring may be
/// used again.
#[cfg(loom)]
pub unsafe fn loom_header_drop(base: *mut u8) {
    // SAFETY: loom_header wrote these values there; nobody uses them any more.
    unsafe {
        base.add(HEAD_AT).cast::<AtomicU64>().drop_in_place();
        base.add(TAIL_AT).cast::<AtomicU64>().drop_in_place();
        base.add(SLEEPING_AT).cast::<AtomicU32>().drop_in_place();
        base.add(WAITING_AT).cast::<AtomicU32>().drop_in_place();
    }
}

/// What a ring's control words say now, read without taking part: for a report on a link
/// that seems stuck ([`Gauge::read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Words {
    /// Bytes consumed so far.
    pub head: u64,
    /// Bytes produced so far.
    pub tail: u64,
    /// The consumer's flag: it waits to be woken.
    pub sleeping: bool,
    /// The producer's flag: it waits for room.
    pub waiting: bool,
}

impl std::fmt::Display for Words {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "head {} tail {} ({} unread) sleeping {} waiting {}",
            self.head,
            self.tail,
            self.tail.wrapping_sub(self.head),
            self.sleeping,
            self.waiting
        )
    }
}

/// A read-only view of a ring's control words, for diagnostics: it never writes and never
/// takes part in the protocol.
#[derive(Debug)]
pub struct Gauge {
    region: Region,
}

// SAFETY: a gauge only loads the control words, atomically; sharing it between threads shares
// nothing else.
unsafe impl Sync for Gauge {}

impl Gauge {
    /// A gauge on the ring at `base`.
    ///
    /// # Safety
    ///
    /// As for [`Producer::new`], except that any number of gauges may watch one ring.
    pub unsafe fn new(base: *mut u8, capacity: usize) -> Result<Gauge, Corrupt> {
        // SAFETY: forwarded to the caller.
        let region = unsafe { Region::new(base, capacity)? };
        Ok(Gauge { region })
    }

    /// The control words now (each read atomically, not all at one instant).
    pub fn read(&self) -> Words {
        Words {
            head: self.region.word(HEAD_AT).load(Ordering::SeqCst),
            tail: self.region.word(TAIL_AT).load(Ordering::SeqCst),
            sleeping: self.region.flag().load(Ordering::SeqCst) != 0,
            waiting: self.region.flag_at(WAITING_AT).load(Ordering::SeqCst) != 0,
        }
    }
}

/// The producing end of a ring.
#[derive(Debug)]
pub struct Producer {
    region: Region,
    tail: u64,
    head_seen: u64,
}

impl Producer {
    /// The producing end of the ring at `base`.
    ///
    /// The ring's memory must have been all zeros when the segment was created (a new memory
    /// file is). Neither end resets it: the other side may already be using its half (a
    /// consumer that set its `sleeping` flag must not have it cleared under it).
    ///
    /// # Safety
    ///
    /// `base` must point to [`HEADER`]` + capacity` bytes, aligned to 64, readable and writable
    /// and mapped for as long as the producer lives; only one producer may use the ring.
    pub unsafe fn new(base: *mut u8, capacity: usize) -> Result<Producer, Corrupt> {
        // SAFETY: forwarded to the caller.
        let region = unsafe { Region::new(base, capacity)? };
        Ok(Producer {
            region,
            tail: 0,
            head_seen: 0,
        })
    }

    /// Largest payload one record can carry.
    pub fn max_record(&self) -> usize {
        self.region.capacity / 2 - RECORD_HEADER
    }

    /// Reads the consumer's `head`, checking it against what this side knows.
    fn head(&mut self) -> Result<u64, Corrupt> {
        let head = self.region.word(HEAD_AT).load(Ordering::Acquire);
        let cap = self.region.capacity as u64;
        if head < self.head_seen || head > self.tail || self.tail - head > cap {
            return Err(Corrupt(
                "the consumer's position moved backwards or past the data",
            ));
        }
        self.head_seen = head;
        Ok(head)
    }

    /// Appends one record of `bytes` (at most [`Producer::max_record`]) if there is room.
    /// Returns `Ok(false)` when the ring is too full now; the consumer frees room as it reads.
    pub fn try_push(&mut self, bytes: &[u8], more: bool) -> Result<bool, Corrupt> {
        assert!(
            bytes.len() <= self.max_record(),
            "record too large for the ring"
        );
        let cap = self.region.capacity as u64;
        let need = (RECORD_HEADER + padded(bytes.len())) as u64;
        let offset = (self.tail % cap) as usize;
        let to_end = cap - offset as u64;
        let skip = if to_end < need { to_end } else { 0 };
        let free = cap - (self.tail - self.head()?);
        if free < skip + need {
            return Ok(false);
        }
        let mut at = offset;
        if skip > 0 {
            // Too little room before the end: mark the rest as skipped, continue at 0. There
            // is always room for a record header here, since records are 8-aligned.
            let mut h = [0u8; RECORD_HEADER];
            h[4..].copy_from_slice(&SKIP.to_le_bytes());
            self.region.write(at, &h);
            at = 0;
        }
        let mut h = [0u8; RECORD_HEADER];
        h[..4].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        h[4..].copy_from_slice(&(if more { MORE } else { 0 }).to_le_bytes());
        self.region.write(at, &h);
        self.region.write(at + RECORD_HEADER, bytes);
        self.tail += skip + need;
        // Release: the record's bytes are visible before the tail that covers them.
        self.region
            .word(TAIL_AT)
            .store(self.tail, Ordering::Release);
        Ok(true)
    }

    /// Reserves contiguous room for one record at the tail, to be written in place and then
    /// published with [`Producer::commit`]: at least `min` payload bytes (capped at
    /// [`Producer::max_record`]), and as much more as lies contiguous before the end of the ring
    /// or the data not yet consumed. Returns `Ok(None)` when there is not that much room now.
    ///
    /// When the room before the end of the ring is too short, a skip record is published
    /// there and the room starts at offset 0. Nothing else is published until `commit`; a
    /// reservation that is never committed is simply overwritten by the next one.
    pub fn reserve(&mut self, min: usize) -> Result<Option<Reservation>, Corrupt> {
        let cap = self.region.capacity as u64;
        let need = (RECORD_HEADER + padded(min.min(self.max_record()))) as u64;
        let free = cap - (self.tail - self.head()?);
        let offset = self.tail % cap;
        let to_end = cap - offset;
        let (offset, contiguous) = if to_end.min(free) >= need {
            (offset, to_end.min(free))
        } else if to_end < need && free >= to_end + need {
            let mut h = [0u8; RECORD_HEADER];
            h[4..].copy_from_slice(&SKIP.to_le_bytes());
            self.region.write(offset as usize, &h);
            self.tail += to_end;
            self.region
                .word(TAIL_AT)
                .store(self.tail, Ordering::Release);
            (0, free - to_end)
        } else {
            return Ok(None);
        };
        // Both are multiples of 8 (records are padded), so the room is too.
        let room = (contiguous as usize - RECORD_HEADER).min(self.max_record());
        Ok(Some(Reservation {
            tail: self.tail,
            offset: offset as usize,
            room,
        }))
    }

    /// Where the payload of `reservation` is written: [`Reservation::room`] bytes, which
    /// belong to this producer until it commits them.
    pub fn payload(&self, reservation: &Reservation) -> *mut u8 {
        self.region.record_ptr(reservation.offset + RECORD_HEADER)
    }

    /// Publishes the first `len` bytes written at [`Producer::payload`] as one whole message.
    ///
    /// # Panics
    ///
    /// If `len` exceeds the reservation's room, or something was pushed since it was made.
    pub fn commit(&mut self, reservation: Reservation, len: usize) {
        assert!(len <= reservation.room && reservation.tail == self.tail);
        let mut h = [0u8; RECORD_HEADER];
        h[..4].copy_from_slice(&(len as u32).to_le_bytes());
        self.region.write(reservation.offset, &h);
        self.tail += (RECORD_HEADER + padded(len)) as u64;
        // Release: the record's bytes are visible before the tail that covers them.
        self.region
            .word(TAIL_AT)
            .store(self.tail, Ordering::Release);
    }

    /// Whether the consumer said it is going to sleep and needs a wake-up.
    pub fn consumer_sleeping(&self) -> bool {
        // Pairs with the fence in `Consumer::set_sleeping`: either the consumer sees our tail,
        // or we see its flag (a store followed by a load on each side needs both fences).
        fence(Ordering::SeqCst);
        self.region.flag().load(Ordering::SeqCst) != 0
    }

    /// Tells the consumer whether this side waits for room (so it should be woken when the
    /// consumer frees some).
    pub fn set_waiting(&self, waiting: bool) {
        self.region
            .flag_at(WAITING_AT)
            .store(u32::from(waiting), Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }
}

/// Room for one record, from [`Producer::reserve`].
#[derive(Debug)]
pub struct Reservation {
    /// The tail when the room was reserved: committing checks nothing moved since.
    tail: u64,
    /// Where the record's header goes.
    offset: usize,
    room: usize,
}

impl Reservation {
    /// Payload bytes that fit.
    pub fn room(&self) -> usize {
        self.room
    }
}

/// The consuming end of a ring.
#[derive(Debug)]
pub struct Consumer {
    region: Region,
    head: u64,
    tail_seen: u64,
    max_message: usize,
    /// The records of a message whose last record has not arrived yet.
    partial: Vec<u8>,
    /// Set while the rest of a message over `max_message` is skipped.
    discarding: bool,
}

impl Consumer {
    /// The consuming end of the ring at `base`, which the producer initialised.
    ///
    /// Messages longer than `max_message` bytes are never assembled, so a peer cannot make this
    /// side allocate without bound: [`Consumer::try_pop`] returns their first
    /// [`OVERSIZED_PREFIX`] bytes alone (a frame's header, which names its call and its
    /// length) and skips the rest. The ring stays usable.
    ///
    /// # Safety
    ///
    /// As for [`Producer::new`], for the one consumer of the ring.
    pub unsafe fn new(
        base: *mut u8,
        capacity: usize,
        max_message: usize,
    ) -> Result<Consumer, Corrupt> {
        // SAFETY: forwarded to the caller.
        let region = unsafe { Region::new(base, capacity)? };
        Ok(Consumer {
            region,
            head: 0,
            tail_seen: 0,
            max_message,
            partial: Vec::new(),
            discarding: false,
        })
    }

    /// Reads the producer's `tail`, checking it against what this side knows.
    fn tail(&mut self) -> Result<u64, Corrupt> {
        let tail = self.region.word(TAIL_AT).load(Ordering::Acquire);
        if tail < self.tail_seen
            || tail < self.head
            || tail - self.head > self.region.capacity as u64
        {
            return Err(Corrupt(
                "the producer's position moved backwards or beyond the ring",
            ));
        }
        self.tail_seen = tail;
        Ok(tail)
    }

    /// Takes the records published so far. Returns the next whole message, if its last record
    /// has arrived; the records of a message still being written are kept aside (freeing their
    /// room in the ring), so a message larger than the ring goes through.
    pub fn try_pop(&mut self) -> Result<Option<Vec<u8>>, Corrupt> {
        let tail = self.tail()?;
        let cap = self.region.capacity as u64;
        while self.head != tail {
            let offset = (self.head % cap) as usize;
            if offset % 8 != 0 {
                return Err(Corrupt("record header misaligned"));
            }
            let (len, flags) = self.region.record_header(offset);
            let len = len as usize;
            if flags == SKIP {
                let next = self.head + (cap - offset as u64);
                if next > tail {
                    return Err(Corrupt("skip record beyond the published data"));
                }
                self.advance(next);
                continue;
            }
            if flags & !MORE != 0 {
                return Err(Corrupt("record has unknown flags"));
            }
            let size = (RECORD_HEADER + padded(len)) as u64;
            if offset as u64 + size > cap || self.head + size > tail {
                return Err(Corrupt("record length beyond the published data"));
            }
            let last = flags & MORE == 0;
            if self.discarding {
                self.advance(self.head + size);
                self.discarding = !last;
                continue;
            }
            if self.partial.len() + len > self.max_message {
                // Too long: keep what names it, skip the rest of its records.
                let keep = OVERSIZED_PREFIX.saturating_sub(self.partial.len()).min(len);
                self.region
                    .read_append(offset + RECORD_HEADER, keep, &mut self.partial);
                self.advance(self.head + size);
                self.discarding = !last;
                let mut prefix = std::mem::take(&mut self.partial);
                prefix.truncate(OVERSIZED_PREFIX);
                return Ok(Some(prefix));
            }
            self.region
                .read_append(offset + RECORD_HEADER, len, &mut self.partial);
            self.advance(self.head + size);
            if last {
                return Ok(Some(std::mem::take(&mut self.partial)));
            }
        }
        Ok(None)
    }

    /// Whether a message has begun to arrive and not ended (or is being skipped).
    pub fn assembling(&self) -> bool {
        !self.partial.is_empty() || self.discarding
    }

    fn advance(&mut self, head: u64) {
        self.head = head;
        // Release: we are done reading those bytes before the producer may reuse them.
        self.region.word(HEAD_AT).store(head, Ordering::Release);
    }

    /// Whether the producer said it waits for room.
    pub fn producer_waiting(&self) -> bool {
        fence(Ordering::SeqCst);
        self.region.flag_at(WAITING_AT).load(Ordering::SeqCst) != 0
    }

    /// Tells the producer whether this side is about to sleep (so it must be woken) or awake.
    /// After setting it, check the ring once more before sleeping: a message published just
    /// before the flag was seen would otherwise wait for the next one.
    pub fn set_sleeping(&self, sleeping: bool) {
        self.region
            .flag()
            .store(u32::from(sleeping), Ordering::SeqCst);
        // See `Producer::consumer_sleeping`.
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
#[cfg(not(loom))]
mod tests {
    use super::*;

    /// A ring's memory in this process, 64-aligned.
    struct Memory(Vec<AlignedLine>);

    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    struct AlignedLine([u8; 64]);

    impl Memory {
        fn new(capacity: usize) -> Memory {
            Memory(vec![AlignedLine([0; 64]); (HEADER + capacity) / 64])
        }
        fn base(&mut self) -> *mut u8 {
            self.0.as_mut_ptr().cast()
        }
    }

    fn ring(mem: &mut Memory, capacity: usize) -> (Producer, Consumer) {
        // SAFETY: `mem` holds HEADER + capacity bytes, 64-aligned, and outlives both ends in
        // every test; one producer and one consumer.
        unsafe {
            (
                Producer::new(mem.base(), capacity).unwrap(),
                Consumer::new(mem.base(), capacity, 1 << 20).unwrap(),
            )
        }
    }

    fn send(p: &mut Producer, message: &[u8]) -> bool {
        let chunk = p.max_record();
        let parts: Vec<&[u8]> = if message.is_empty() {
            vec![message]
        } else {
            message.chunks(chunk).collect()
        };
        let last = parts.len() - 1;
        parts
            .iter()
            .enumerate()
            .all(|(i, part)| p.try_push(part, i != last).unwrap())
    }

    #[test]
    fn messages_round_trip_in_order_across_wraparound() {
        let mut mem = Memory::new(256);
        let (mut p, mut c) = ring(&mut mem, 256);
        for i in 0..1000u32 {
            let message: Vec<u8> = (0..(i % 50)).map(|b| (b as u8) ^ (i as u8)).collect();
            assert!(send(&mut p, &message), "message {i}");
            assert_eq!(c.try_pop().unwrap(), Some(message), "message {i}");
        }
        assert_eq!(c.try_pop().unwrap(), None);
    }

    /// Writes `message` in place through a reservation; false if there was no room.
    fn send_in_place(p: &mut Producer, message: &[u8]) -> bool {
        let Some(r) = p.reserve(message.len()).unwrap() else {
            return false;
        };
        assert!(r.room() >= message.len());
        // SAFETY: the reservation's payload has `room` bytes that belong to the producer.
        unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), p.payload(&r), message.len()) };
        p.commit(r, message.len());
        true
    }

    #[test]
    fn records_written_in_place_interleave_with_pushed_ones_across_wraparound() {
        let mut mem = Memory::new(256);
        let (mut p, mut c) = ring(&mut mem, 256);
        for i in 0..1000u32 {
            let message: Vec<u8> = (0..(i % 70)).map(|b| (b as u8) ^ (i as u8)).collect();
            let sent = if i % 3 == 0 {
                send(&mut p, &message)
            } else {
                send_in_place(&mut p, &message)
            };
            assert!(sent, "message {i}");
            // A reservation dropped without commit publishes nothing.
            if i % 5 == 0 {
                let _abandoned = p.reserve(8).unwrap();
            }
            assert_eq!(c.try_pop().unwrap(), Some(message), "message {i}");
        }
        assert_eq!(c.try_pop().unwrap(), None);
    }

    #[test]
    fn reservations_wait_for_room() {
        let mut mem = Memory::new(256);
        let (mut p, mut c) = ring(&mut mem, 256);
        assert!(send_in_place(&mut p, &[1; 100]));
        // 104 + 8 bytes used of 256: 120 need 128 contiguous, and there are 144 left.
        assert!(send_in_place(&mut p, &[2; 120]));
        // Now 16 bytes are free: no room for a record of 8 bytes plus its header.
        assert!(p.reserve(16).unwrap().is_none());
        assert_eq!(c.try_pop().unwrap(), Some(vec![1; 100]));
        // Room came back at the start of the ring, past a skip record.
        assert!(send_in_place(&mut p, &[3; 64]));
        assert_eq!(c.try_pop().unwrap(), Some(vec![2; 120]));
        assert_eq!(c.try_pop().unwrap(), Some(vec![3; 64]));
    }

    #[test]
    fn a_full_ring_refuses_until_the_consumer_reads() {
        let mut mem = Memory::new(128);
        let (mut p, mut c) = ring(&mut mem, 128);
        let mut pushed = 0;
        while p.try_push(&[7; 24], false).unwrap() {
            pushed += 1;
        }
        assert!(pushed > 0);
        assert!(c.try_pop().unwrap().is_some());
        assert!(p.try_push(&[7; 24], false).unwrap());
    }

    #[test]
    fn a_message_larger_than_the_ring_goes_through_in_records() {
        let mut mem = Memory::new(1024);
        let (mut p, mut c) = ring(&mut mem, 1024);
        let message: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut received = None;
        let mut parts = message.chunks(p.max_record()).peekable();
        while let Some(part) = parts.next() {
            let more = parts.peek().is_some();
            // When the ring is full, the consumer takes what is there, even mid-message.
            while !p.try_push(part, more).unwrap() {
                assert_eq!(c.try_pop().unwrap(), None);
            }
        }
        while received.is_none() {
            received = c.try_pop().unwrap();
        }
        assert_eq!(received, Some(message));
    }

    #[test]
    fn scribbled_memory_is_an_error_never_a_panic() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for round in 0..2000 {
            let mut mem = Memory::new(256);
            let (mut p, mut c) = ring(&mut mem, 256);
            assert!(send(&mut p, b"hello"));
            // Scribble over a random part of the whole segment, header included.
            let base = mem.base();
            for _ in 0..(1 + round % 16) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % (HEADER + 256);
                // SAFETY: `at` is within the memory; single-threaded test.
                unsafe { *base.add(at) = (x >> 32) as u8 };
            }
            for _ in 0..4 {
                match c.try_pop() {
                    Ok(message) => assert!(message.is_none_or(|m| m.len() <= 1 << 20)),
                    Err(Corrupt(_)) => break,
                }
            }
            let _ = p.try_push(b"again", false);
        }
    }

    #[test]
    fn positions_that_jump_are_refused() {
        let mut mem = Memory::new(256);
        let (mut p, mut c) = ring(&mut mem, 256);
        assert!(send(&mut p, b"x"));
        let base = mem.base();
        // A tail more than one capacity ahead of the head.
        // SAFETY: offset TAIL_AT is inside the header; single-threaded test.
        unsafe { (*base.add(TAIL_AT).cast::<AtomicU64>()).store(10_000, Ordering::SeqCst) };
        assert!(c.try_pop().is_err());
        // A head past the tail.
        // SAFETY: as above.
        unsafe { (*base.add(HEAD_AT).cast::<AtomicU64>()).store(99, Ordering::SeqCst) };
        assert!(p.try_push(b"y", false).is_err());
    }

    #[test]
    fn long_messages_are_cut_to_their_prefix_and_the_ring_goes_on() {
        let mut mem = Memory::new(1024);
        // SAFETY: as in `ring`.
        let (mut p, mut c) = unsafe {
            (
                Producer::new(mem.base(), 1024).unwrap(),
                Consumer::new(mem.base(), 1024, 100).unwrap(),
            )
        };
        let long: Vec<u8> = (0..64u8).collect();
        assert!(p.try_push(&long, true).unwrap());
        // Known too long at its second record: its prefix comes out at once.
        assert!(p.try_push(&[1; 64], true).unwrap());
        assert_eq!(
            c.try_pop().unwrap().as_deref(),
            Some(&long[..OVERSIZED_PREFIX])
        );
        // Its last records are skipped as they come; the next message arrives whole.
        assert!(p.try_push(&[2; 64], false).unwrap());
        assert!(p.try_push(b"next", false).unwrap());
        assert_eq!(c.try_pop().unwrap().as_deref(), Some(&b"next"[..]));
        // A single record over the limit is cut the same way.
        assert!(p.try_push(&[3; 120], false).unwrap());
        assert!(p.try_push(b"after", false).unwrap());
        assert_eq!(c.try_pop().unwrap().as_deref(), Some(&[3; 32][..]));
        assert_eq!(c.try_pop().unwrap().as_deref(), Some(&b"after"[..]));
    }
}

//! The raw shared-memory floor: a ping-pong between two processes on shared atomics, with both
//! sides busy-spinning (or sleeping on a futex), optionally echoing a payload through the
//! shared page.
//!
//! This is the least work two processes can do to exchange a message through shared memory:
//! no framing, no codec, no wake-up protocol beyond one word each way. The benches measure
//! Courier's shared-memory transport against it.
//!
//! The segment is a memory file the child process inherits (it is created without
//! close-on-exec); the child maps it by the descriptor number it is given.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// The control page: the ping word, the pong word and the payload length, each on its own
/// cache line.
const CONTROL: usize = 4096;
/// Ping word values with a meaning of their own; rounds are numbered below them.
const STOP: u32 = u32::MAX;
const PAUSE: u32 = u32::MAX - 1;

/// A shared segment for the raw ping-pong: a control page, then a request area and a reply
/// area of `capacity` bytes each.
#[derive(Debug)]
pub struct SpinSegment {
    base: *mut u8,
    capacity: usize,
    /// The pong side was told to sleep: the next ping must wake it.
    paused: std::cell::Cell<bool>,
}

// SAFETY: the segment is plain shared memory; all access to the control words is atomic, and
// the payload areas are only touched by the side that the ping/pong protocol gives them to.
unsafe impl Send for SpinSegment {}

impl SpinSegment {
    /// Creates a segment with room for payloads up to `capacity` bytes and returns it with the
    /// descriptor a child process can map with [`SpinSegment::map`].
    pub fn create(capacity: usize) -> std::io::Result<(SpinSegment, i32)> {
        // SAFETY: memfd_create with a valid NUL-terminated name; no flags, so the descriptor
        // survives exec for the child.
        let fd = unsafe { libc::memfd_create(c"courier-bench-spin".as_ptr(), 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let len = Self::len(capacity);
        // SAFETY: ftruncate on the descriptor just created.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the file was just sized to `len(capacity)`.
        let segment = unsafe { SpinSegment::map(fd, capacity)? };
        Ok((segment, fd))
    }

    fn len(capacity: usize) -> usize {
        CONTROL + 2 * capacity.next_multiple_of(4096)
    }

    /// Maps the segment behind `fd`.
    ///
    /// # Safety
    /// `fd` must be a memory file of at least the size [`SpinSegment::create`] gave it for the
    /// same `capacity`.
    pub unsafe fn map(fd: i32, capacity: usize) -> std::io::Result<SpinSegment> {
        // SAFETY: a fresh shared mapping of the file; the caller vouches for its size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::len(capacity),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SpinSegment {
            base: ptr.cast(),
            capacity,
            paused: std::cell::Cell::new(false),
        })
    }

    fn word(&self, line: usize) -> &AtomicU32 {
        // SAFETY: lines 0 and 1 of the control page, 64-byte aligned, inside a live mapping
        // that lasts as long as `self`.
        unsafe { &*self.base.add(line * 64).cast::<AtomicU32>() }
    }

    fn length(&self) -> &AtomicUsize {
        // SAFETY: line 2 of the control page, aligned, inside the live mapping.
        unsafe { &*self.base.add(128).cast::<AtomicUsize>() }
    }

    fn area(&self, reply: bool) -> *mut u8 {
        let offset = CONTROL
            + if reply {
                self.capacity.next_multiple_of(4096)
            } else {
                0
            };
        // SAFETY: within the mapping: CONTROL + 2 areas is its length.
        unsafe { self.base.add(offset) }
    }

    /// The ping side: sends round `n` (from 1 to `u32::MAX - 2`) with `payload` and waits for
    /// the echo, copied into `out`, as `how` says. Returns the echoed length.
    pub fn ping(&self, n: u32, payload: &[u8], out: &mut Vec<u8>, how: Waiting) -> usize {
        let len = payload.len().min(self.capacity);
        // SAFETY: the request area is ours until we publish `n`; `len` fits in it.
        unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), self.area(false), len) };
        self.length().store(len, Ordering::Relaxed);
        let (ping, pong) = (self.word(0), self.word(1));
        ping.store(n, Ordering::Release);
        // A pong side told to pause sleeps on the futex, whatever the mode.
        if self.paused.replace(false) {
            futex_wake(ping);
        }
        how.wake(ping);
        loop {
            let v = pong.load(Ordering::Acquire);
            if v == n {
                break;
            }
            how.wait(pong, v);
        }
        out.clear();
        out.reserve(len);
        // SAFETY: the pong side published the reply area (Acquire above) and will not touch it
        // until the next ping; `out` has room for `len` bytes, set as its length after copying.
        unsafe {
            std::ptr::copy_nonoverlapping(self.area(true), out.as_mut_ptr(), len);
            out.set_len(len);
        }
        len
    }

    /// The pong side: echoes every ping, waiting as `how` says, until told to stop with
    /// [`SpinSegment::stop`].
    pub fn pong(&self, how: Waiting) {
        let (ping, pong) = (self.word(0), self.word(1));
        let mut seen = 0;
        loop {
            let v = loop {
                let v = ping.load(Ordering::Acquire);
                if v != seen {
                    break v;
                }
                how.wait(ping, seen);
            };
            if v == STOP {
                return;
            }
            seen = v;
            if v == PAUSE {
                // Sleep until the next ping (or stop) changes the word.
                while ping.load(Ordering::Acquire) == PAUSE {
                    futex_wait(ping, PAUSE);
                }
                continue;
            }
            let len = self.length().load(Ordering::Relaxed).min(self.capacity);
            // SAFETY: the ping side published the request (Acquire above) and waits for our
            // pong before touching either area again; both areas hold `capacity` bytes.
            unsafe { std::ptr::copy_nonoverlapping(self.area(false), self.area(true), len) };
            pong.store(v, Ordering::Release);
            how.wake(pong);
        }
    }

    /// Tells the pong side to sleep until the next ping, so that it leaves the CPU to others
    /// between measurements.
    pub fn pause(&self) {
        self.word(0).store(PAUSE, Ordering::Release);
        self.paused.set(true);
    }

    /// Tells the pong side, waiting as `how` says, to return.
    pub fn stop(&self, how: Waiting) {
        let ping = self.word(0);
        ping.store(STOP, Ordering::Release);
        futex_wake(ping);
        how.wake(ping);
    }
}

impl Drop for SpinSegment {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; nothing borrows it past `self`.
        unsafe { libc::munmap(self.base.cast(), Self::len(self.capacity)) };
    }
}

/// How the two sides of the ping-pong wait for each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Busy-spinning on the shared words.
    Spin,
    /// Sleeping on a futex on the shared word.
    Futex,
    /// Sleeping on an eventfd each, rung by the other side: the doorbell a parked shared-memory
    /// link end waits on (through epoll, which adds to it).
    Bells(Bells),
}

impl Waiting {
    /// Waits (once: the caller looks again) while `word` holds `seen`.
    fn wait(self, word: &AtomicU32, seen: u32) {
        match self {
            Waiting::Spin => std::hint::spin_loop(),
            Waiting::Futex => futex_wait(word, seen),
            Waiting::Bells(bells) => wait_bell(bells.mine),
        }
    }

    /// Wakes the other side after a store to `word`.
    fn wake(self, word: &AtomicU32) {
        match self {
            Waiting::Spin => {}
            Waiting::Futex => futex_wake(word),
            Waiting::Bells(bells) => ring(bells.theirs),
        }
    }
}

/// The two eventfds of one side of a [`Waiting::Bells`] ping-pong: the one it waits on and the
/// one it rings. Made by [`Bells::pair`] without close-on-exec, so a child inherits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bells {
    /// Rung by the other side.
    pub mine: i32,
    /// Rung by this side.
    pub theirs: i32,
}

impl Bells {
    /// Two eventfds: the pinging side's bells, and the same two crossed for the pong side.
    pub fn pair() -> std::io::Result<(Bells, Bells)> {
        // SAFETY: eventfd(2) with no flags returns a new descriptor or -1.
        let (a, b) = unsafe { (libc::eventfd(0, 0), libc::eventfd(0, 0)) };
        if a < 0 || b < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((Bells { mine: a, theirs: b }, Bells { mine: b, theirs: a }))
    }
}

fn ring(fd: i32) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an eventfd.
    unsafe { libc::write(fd, one.as_ptr().cast(), 8) };
}

fn wait_bell(fd: i32) {
    let mut count = [0u8; 8];
    // SAFETY: reads 8 bytes into a live buffer from an eventfd (blocking until it is rung).
    unsafe { libc::read(fd, count.as_mut_ptr().cast(), 8) };
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 in shared memory (not FUTEX_PRIVATE: the other
    // process waits on the same physical page).
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            std::ptr::null::<libc::timespec>(),
        )
    };
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32 in shared memory.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1) };
}

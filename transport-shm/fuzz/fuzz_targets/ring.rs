//! The ring reader over a segment the fuzzer writes: the input is a script of writes into the
//! shared memory (positions, record headers, bytes) and reads by the consumer, as a hostile
//! peer would interleave them. Any panic, out-of-bounds access (AddressSanitizer) or abort is
//! a finding; every message the consumer returns must fit its limit, and once it reports the
//! ring corrupt it is not read again.
#![no_main]

use courier_shm::ring::{Consumer, HEADER};
use libfuzzer_sys::fuzz_target;

const CAPACITY: usize = 1024;
const MAX_MESSAGE: usize = 3000;

#[repr(C, align(64))]
struct Segment([u8; HEADER + CAPACITY]);

fuzz_target!(|data: &[u8]| {
    let mut segment = Box::new(Segment([0; HEADER + CAPACITY]));
    let base = segment.0.as_mut_ptr();
    // SAFETY: the segment is 64-aligned and HEADER + CAPACITY bytes long, and outlives the
    // consumer (dropped at the end of this closure, after it). The writes below go through
    // `base` with volatile stores within the segment, as another process would write.
    let mut consumer = match unsafe { Consumer::new(base, CAPACITY, MAX_MESSAGE) } {
        Ok(c) => c,
        Err(_) => return,
    };
    let mut script = data;
    while let [op, rest @ ..] = script {
        script = rest;
        match op % 4 {
            // Write up to 16 bytes at an offset the script picks.
            0 | 1 => {
                let [hi, lo, len, rest @ ..] = script else { break };
                let at = usize::from(u16::from_be_bytes([*hi, *lo])) % (HEADER + CAPACITY);
                let len = usize::from(*len % 17).min(rest.len()).min(HEADER + CAPACITY - at);
                for (i, b) in rest[..len].iter().enumerate() {
                    // SAFETY: `at + i < HEADER + CAPACITY`, inside the segment.
                    unsafe { base.add(at + i).write_volatile(*b) };
                }
                script = &rest[len..];
            }
            // Publish a tail position (the producer's word at offset 64).
            2 => {
                let [a, b, rest @ ..] = script else { break };
                let tail = u64::from(u16::from_be_bytes([*a, *b]));
                for (i, byte) in tail.to_ne_bytes().iter().enumerate() {
                    // SAFETY: bytes 64..72 of the segment.
                    unsafe { base.add(64 + i).write_volatile(*byte) };
                }
                script = rest;
            }
            // Read.
            _ => match consumer.try_pop() {
                Ok(Some(message)) => assert!(message.len() <= MAX_MESSAGE),
                Ok(None) => {}
                Err(_) => break,
            },
        }
    }
    drop(consumer);
    drop(segment);
});

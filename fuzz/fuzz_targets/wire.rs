//! libFuzzer entry for the `wire` target; the body is
//! `barge::fuzzing::wire`. Every allocation is checked against the caps of
//! `barge::fuzzing::CappedAlloc`.
#![no_main]

#[global_allocator]
static ALLOC: barge::fuzzing::CappedAlloc = barge::fuzzing::CappedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| barge::fuzzing::wire(data));

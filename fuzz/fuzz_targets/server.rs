//! libFuzzer entry for the `server` target; the body is
//! `barge::fuzzing::server`. Every allocation is checked against the caps of
//! `barge::fuzzing::CappedAlloc`.
#![no_main]

#[global_allocator]
static ALLOC: barge::fuzzing::CappedAlloc = barge::fuzzing::CappedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| barge::fuzzing::server(data));

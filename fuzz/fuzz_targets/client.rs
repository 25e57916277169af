//! libFuzzer entry for the `client` target; the body is
//! `barge::fuzzing::client`. Every allocation is checked against the caps of
//! `barge::fuzzing::CappedAlloc`.
#![no_main]

#[global_allocator]
static ALLOC: barge::fuzzing::CappedAlloc = barge::fuzzing::CappedAlloc;

libfuzzer_sys::fuzz_target!(|data: &[u8]| barge::fuzzing::client(data));

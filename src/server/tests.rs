//! In-process tests of the helper over a socketpair.

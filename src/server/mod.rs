//! The helper's side of the protocol, run by `barge-helper`.

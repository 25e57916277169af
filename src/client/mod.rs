//! The client side: [`Handle`] and its operations.

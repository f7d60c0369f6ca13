//! The log target of this crate: `libp2p_dcutr`, the one stock
//! `libp2p-dcutr` logs under, so that `RUST_LOG=libp2p_dcutr=debug` keeps
//! showing what the behaviour does after the swap.
//!
//! The modules that log import this module as `tracing`
//! (`use crate::log as tracing;`): their `tracing::debug!(..)` calls then
//! go through the macros below, which add the target. The core logs under
//! its own target, `dcutr_core`; the behaviour repeats each of the core's
//! events at debug under `libp2p_dcutr`, so that one filter shows the
//! whole upgrade.

/// The target of every log line of this crate.
pub(crate) const TARGET: &str = "libp2p_dcutr";

macro_rules! trace {
    ($($arg:tt)*) => { ::tracing::trace!(target: $crate::log::TARGET, $($arg)*) };
}
macro_rules! debug {
    ($($arg:tt)*) => { ::tracing::debug!(target: $crate::log::TARGET, $($arg)*) };
}
macro_rules! warn_ {
    ($($arg:tt)*) => { ::tracing::warn!(target: $crate::log::TARGET, $($arg)*) };
}
macro_rules! error {
    ($($arg:tt)*) => { ::tracing::error!(target: $crate::log::TARGET, $($arg)*) };
}

// `warn` alone would clash with the built-in attribute of that name.
pub(crate) use {debug, error, trace, warn_ as warn};

//! The file descriptors the birthday punch over TCP takes, and raising
//! the process's `RLIMIT_NOFILE` soft limit as far as that needs.
//!
//! Over TCP every probe connect (easy side) and every fresh socket (hard
//! side) is a descriptor while it lives. The core bounds both
//! ([`TCP_DEFAULT_MAX_IN_FLIGHT`] probes alive, [`DEFAULT_SOCKETS`] fresh
//! sockets); the carrier makes sure the soft limit holds them, raising it
//! towards the hard limit only as far as needed, and reports a typed
//! [`FdLimitError`] naming the hard limit when it cannot.

use dcutr_core::birthday::{DEFAULT_SOCKETS, TCP_DEFAULT_MAX_IN_FLIGHT};

/// Descriptors kept free for everything else the process holds while a
/// punch runs (its listener, QUIC socket, relayed connection, logs, a
/// runtime's own): 256, a quarter of Linux's default soft limit.
pub const FD_HEADROOM: u64 = 256;

/// Descriptors one birthday punch over TCP needs at most, with the core's
/// defaults: the larger side's sockets (the easy side's
/// [`TCP_DEFAULT_MAX_IN_FLIGHT`] = 512 probe connects, the hard side's
/// [`DEFAULT_SOCKETS`] = 256) plus [`FD_HEADROOM`]: 768, within Linux's
/// default soft limit of 1024, so usually nothing changes.
#[must_use]
pub const fn tcp_birthday_fd_budget() -> u64 {
    let sockets = if TCP_DEFAULT_MAX_IN_FLIGHT > DEFAULT_SOCKETS {
        TCP_DEFAULT_MAX_IN_FLIGHT
    } else {
        DEFAULT_SOCKETS
    };
    sockets as u64 + FD_HEADROOM
}

/// The descriptor limit cannot hold the birthday punch's budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FdLimitError {
    /// The hard limit is below what the punch needs: only an
    /// administrator can raise it (`ulimit -Hn`, `LimitNOFILE=`).
    #[error(
        "the birthday punch over TCP needs {needed} file descriptors, but RLIMIT_NOFILE's hard limit is {hard}"
    )]
    HardLimitTooLow {
        /// Descriptors needed.
        needed: u64,
        /// The process's hard limit.
        hard: u64,
    },
    /// The soft limit could not be raised to `wanted` (below the hard
    /// limit, yet `setrlimit` failed).
    #[error("raising RLIMIT_NOFILE's soft limit to {wanted} failed: {kind}")]
    Raise {
        /// The soft limit asked for.
        wanted: u64,
        /// What `setrlimit` said.
        kind: std::io::ErrorKind,
    },
}

/// The soft limit to set so `needed` descriptors fit under `soft` and
/// `hard` (`None` is unlimited): `Ok(None)` when `soft` already holds
/// them, `Ok(Some(needed))` to raise it exactly that far.
///
/// # Errors
/// [`FdLimitError::HardLimitTooLow`] when `hard` is below `needed`.
pub fn plan(
    needed: u64,
    soft: Option<u64>,
    hard: Option<u64>,
) -> Result<Option<u64>, FdLimitError> {
    if soft.is_none_or(|s| s >= needed) {
        return Ok(None);
    }
    match hard {
        Some(hard) if hard < needed => Err(FdLimitError::HardLimitTooLow { needed, hard }),
        _ => Ok(Some(needed)),
    }
}

/// Makes sure the process's soft `RLIMIT_NOFILE` holds `needed`
/// descriptors, raising it only as far as that ([`plan`]); returns the
/// soft limit now in effect (`None`: unlimited, or not a Unix).
///
/// # Errors
/// [`FdLimitError`] when the hard limit is too low or raising fails.
pub fn ensure(needed: u64) -> Result<Option<u64>, FdLimitError> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        match plan(needed, limit.current, limit.maximum)? {
            None => Ok(limit.current),
            Some(wanted) => {
                let mut new = limit;
                new.current = Some(wanted);
                setrlimit(Resource::Nofile, new).map_err(|e| FdLimitError::Raise {
                    wanted,
                    kind: std::io::Error::from(e).kind(),
                })?;
                tracing::debug!(from = ?limit.current, to = wanted, "raised RLIMIT_NOFILE for the birthday punch");
                Ok(Some(wanted))
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = needed;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_the_larger_side_plus_headroom() {
        assert_eq!(tcp_birthday_fd_budget(), 512 + FD_HEADROOM);
    }

    #[test]
    fn a_soft_limit_that_holds_the_budget_is_left_alone() {
        assert_eq!(plan(768, Some(1024), Some(4096)), Ok(None));
        assert_eq!(plan(768, Some(768), Some(768)), Ok(None));
        assert_eq!(plan(768, None, None), Ok(None));
    }

    #[test]
    fn the_soft_limit_is_raised_exactly_to_the_budget() {
        assert_eq!(plan(768, Some(256), Some(4096)), Ok(Some(768)));
        assert_eq!(plan(768, Some(256), None), Ok(Some(768)));
    }

    #[test]
    fn a_hard_limit_too_low_is_a_typed_error_naming_it() {
        let e = plan(768, Some(256), Some(512)).unwrap_err();
        assert_eq!(
            e,
            FdLimitError::HardLimitTooLow {
                needed: 768,
                hard: 512
            }
        );
        assert!(e.to_string().contains("hard limit is 512"));
    }

    #[test]
    fn ensure_leaves_the_process_able_to_hold_the_budget() {
        // Whatever this process's limits, afterwards either the budget
        // fits under the soft limit or the error names the hard one.
        match ensure(tcp_birthday_fd_budget()) {
            Ok(soft) => assert!(soft.is_none_or(|s| s >= tcp_birthday_fd_budget())),
            Err(FdLimitError::HardLimitTooLow { hard, .. }) => {
                assert!(hard < tcp_birthday_fd_budget());
            }
            Err(e) => panic!("{e}"),
        }
    }
}

//! The crate's one error type, and its mapping to gRPC status codes (in exactly one place).
//!
//! The variants say what the caller should do: credential problems mean "get a new
//! token / log in again" (`UNAUTHENTICATED`); database trouble means "retry later and
//! keep your token" (`UNAVAILABLE`). Database error text is logged, never sent.
use std::sync::atomic::{AtomicU64, Ordering};

use auth_api::{ERROR_DOMAIN, ErrorReason};
use chrono::{DateTime, SecondsFormat, Utc};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable credential was sent: log in / send `authorization: Bearer <token>`.
    #[error("{0}")]
    MissingCredentials(String),
    /// The string is not a token this service issues (checked without the database).
    #[error("{0}")]
    TokenMalformed(String),
    #[error(
        "token is not known to this service: it was never issued here or was deleted; create a new token"
    )]
    TokenUnknown,
    #[error("token expired at {}; it can no longer be renewed: create a new token and log in again", fmt_time(*.0))]
    TokenExpired(DateTime<Utc>),
    #[error("token was revoked at {}; create a new token and log in again", fmt_time(*.0))]
    TokenRevoked(DateTime<Utc>),
    /// A request argument (not a credential) is wrong.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    /// The database is down, slow or out of connections: retry later, keep the token.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A bug or a broken invariant; details are in the server log.
    #[error("internal error: {0}")]
    Internal(String),
    /// A startup or configuration problem, with the flag or command that fixes it.
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// RFC 3339 in UTC, second precision: what people and logs see.
pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Error {
    /// The credential reason, for the variants that are credential problems.
    pub fn reason(&self) -> Option<ErrorReason> {
        Some(match self {
            Error::MissingCredentials(_) => ErrorReason::MissingCredentials,
            Error::TokenMalformed(_) => ErrorReason::TokenMalformed,
            Error::TokenUnknown => ErrorReason::TokenUnknown,
            Error::TokenExpired(_) => ErrorReason::TokenExpired,
            Error::TokenRevoked(_) => ErrorReason::TokenRevoked,
            _ => return None,
        })
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        // Connection loss, server shutdown, resource exhaustion and serialization
        // conflicts are transient: the caller should retry. A constraint or syntax
        // error, or a row that does not decode, is a bug in this service. Errors
        // without an SQLSTATE are I/O, connect, timeout or closed-connection
        // failures, except the decoding kinds, which tokio-postgres only tells apart
        // by their text.
        let transient = match e.code() {
            None => {
                let text = e.to_string();
                ![
                    "error serializing",
                    "error deserializing",
                    "invalid column",
                    "query returned an unexpected",
                ]
                .iter()
                .any(|bug| text.starts_with(bug))
            }
            Some(code) => {
                let c = code.code();
                c.starts_with("08")
                    || c.starts_with("53")
                    || c.starts_with("57P")
                    || *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
                    || *code == SqlState::QUERY_CANCELED
                    // A failover left us on a read-only standby.
                    || *code == SqlState::READ_ONLY_SQL_TRANSACTION
            }
        };
        if transient {
            Error::Unavailable(e.to_string())
        } else {
            Error::Internal(e.to_string())
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Error::Unavailable(e.to_string())
    }
}

/// Lets one log line through per second and counts the ones it held back.
struct LogLimiter {
    last_second: AtomicU64,
    held_back: AtomicU64,
}

static OUTAGE_LOG: LogLimiter = LogLimiter {
    last_second: AtomicU64::new(0),
    held_back: AtomicU64::new(0),
};

impl LogLimiter {
    /// `Some(held back since the last line)` when a line may be logged now.
    fn ready(&self) -> Option<u64> {
        let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
        let last = self.last_second.load(Ordering::Relaxed);
        if now != last
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        if let Some(reason) = e.reason() {
            let details = ErrorDetails::with_error_info(
                reason.as_str_name(),
                ERROR_DOMAIN,
                std::collections::HashMap::new(),
            );
            return Status::with_error_details(Code::Unauthenticated, e.to_string(), details);
        }
        match e {
            Error::InvalidArgument(msg) => Status::invalid_argument(msg),
            Error::NotFound(msg) => Status::not_found(msg),
            Error::Unavailable(cause) => {
                // The cause may carry server or host names: log it, send a generic text.
                // During an outage every call fails the same way: one line a second
                // (with how many were folded into it) says it without flooding.
                if let Some(folded) = OUTAGE_LOG.ready() {
                    tracing::warn!(%cause, similar_since_last = folded, "database unavailable");
                }
                Status::unavailable(
                    "database unavailable; retry later (your token was not rejected)",
                )
            }
            other => {
                tracing::error!(error = %other, "internal error");
                Status::internal("internal error; see the server log")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn reason_of(s: &Status) -> Option<String> {
        s.get_error_details().error_info().map(|i| i.reason.clone())
    }

    #[test]
    fn credential_errors_are_unauthenticated_with_reason() {
        let t = DateTime::UNIX_EPOCH;
        let cases = [
            (Error::MissingCredentials("x".into()), "MISSING_CREDENTIALS"),
            (Error::TokenMalformed("x".into()), "TOKEN_MALFORMED"),
            (Error::TokenUnknown, "TOKEN_UNKNOWN"),
            (Error::TokenExpired(t), "TOKEN_EXPIRED"),
            (Error::TokenRevoked(t), "TOKEN_REVOKED"),
        ];
        for (err, reason) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), Code::Unauthenticated);
            assert_eq!(reason_of(&status).as_deref(), Some(reason));
            let info = status.get_error_details().error_info().cloned().unwrap();
            assert_eq!(info.domain, ERROR_DOMAIN);
        }
    }

    #[test]
    fn database_trouble_is_unavailable_and_hides_the_cause() {
        let status = Status::from(Error::Unavailable("connect to 10.1.2.3 refused".into()));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.1.2.3"));
        assert!(reason_of(&status).is_none());
    }

    #[test]
    fn outage_logging_is_limited_to_one_line_a_second() {
        let limiter = LogLimiter {
            last_second: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        };
        assert_eq!(limiter.ready(), Some(0));
        let passed = (0..1000).filter(|_| limiter.ready().is_some()).count();
        // At most one more line, should the second have turned during the loop.
        assert!(passed <= 1, "{passed}");
    }

    #[test]
    fn other_errors_map_to_their_codes() {
        assert_eq!(
            Status::from(Error::InvalidArgument("a".into())).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            Status::from(Error::NotFound("a".into())).code(),
            Code::NotFound
        );
        let internal = Status::from(Error::Internal("secret detail".into()));
        assert_eq!(internal.code(), Code::Internal);
        assert!(!internal.message().contains("secret detail"));
    }

    #[test]
    fn expired_message_names_the_time_and_the_fix() {
        let msg = Error::TokenExpired(DateTime::UNIX_EPOCH).to_string();
        assert!(msg.contains("1970-01-01T00:00:00Z"), "{msg}");
        assert!(msg.contains("create a new token"), "{msg}");
    }
}

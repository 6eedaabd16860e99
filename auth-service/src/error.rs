//! The crate's one error type, and its mapping to gRPC status codes (in exactly one place).
//!
//! The variants say what the caller should do: credential problems mean "get a new
//! token / log in again" (`UNAUTHENTICATED`); database trouble means "retry later and
//! keep your token" (`UNAVAILABLE`). Database error text is logged, never sent. For the
//! command line, [`Error::exit_code`] tells a configuration error (2: fix it, restarting
//! cannot help) from a runtime failure (1).

use auth_api::{ERROR_DOMAIN, ErrorReason};
use chrono::{DateTime, SecondsFormat, Utc};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::telemetry::Every;

#[derive(Debug, Clone, thiserror::Error)]
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
    /// More work than this server takes on at once (one token's renewals, or the
    /// pool's queue): shed at once rather than queued to the timeout. Retry after the
    /// delay, keep the token.
    #[error("{what}; retry in {}", humantime::format_duration(*retry_after))]
    Overloaded {
        what: String,
        retry_after: std::time::Duration,
        shed: Shed,
    },
    /// Too many credential failures from this peer: retry after the delay.
    #[error("too many failed credentials from {peer} in the last minute; retry in {}", humantime::format_duration(*retry_after))]
    TooManyFailures {
        peer: std::net::IpAddr,
        retry_after: std::time::Duration,
    },
    /// The caller (its verified client certificate) may not use this call.
    #[error("{0}")]
    CallerNotAllowed(String),
    /// A bug or a broken invariant; details are in the server log.
    #[error("internal error: {0}")]
    Internal(String),
    /// A command could not finish for a reason that is neither the database, nor this
    /// service's configuration, nor a bug (the server `healthcheck` asks is not serving;
    /// stdout is closed; the embedded cluster's disk is full): running it again may
    /// work. Exit 1.
    #[error("{0}")]
    Runtime(String),
    /// A startup or configuration problem, with the flag or command that fixes it.
    /// Exit 2: restarting cannot fix it.
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why work was shed, for `auth_db_shed_total{cause}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// As many calls wait for a pooled connection as `--db-max-waiting` allows.
    Queue,
    /// The token has `--db-max-per-token` operations in flight.
    Token,
    /// Too many calls already wait for one token's coalesced answer.
    Waiters,
}

impl Shed {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Shed::Queue => "queue",
            Shed::Token => "token",
            Shed::Waiters => "waiters",
        }
    }
}

/// RFC 3339 in UTC, second precision: what people and logs see.
pub(crate) fn fmt_time(t: DateTime<Utc>) -> String {
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

    /// The process exit status of a command that failed with this error: 2 for a
    /// configuration or usage problem, which a restart cannot fix (systemd's
    /// `RestartPreventExitStatus=2`; clap exits 2 on a usage error too), 1 for anything
    /// that may go away (the database unreachable, a failed migration, a bug).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            _ => 1,
        }
    }

    /// An I/O failure while doing `what` (the embedded cluster's files and programs).
    /// Only what the operator must change is [`Error::Config`] (exit 2): a path that
    /// cannot be one, a permission, a read-only filesystem, a program that is not there.
    /// Anything else (a full or failing disk, a quota, no memory) may pass, and systemd
    /// restarts a service that exits 1 but not one that exits 2
    /// (`RestartPreventExitStatus=2`): it is [`Error::Runtime`].
    pub(crate) fn io(what: impl std::fmt::Display, e: &std::io::Error) -> Error {
        if operator_must_fix(e) {
            Error::Config(format!("{what}: {e}"))
        } else {
            Error::Runtime(format!("{what}: {e}"))
        }
    }

    /// A failed attempt to connect when a command starts. A login the server refuses
    /// (SQLSTATE class 28: a wrong password, no `pg_hba.conf` entry) or a database that
    /// does not exist (3D000) will not fix itself: the configuration must change, so it
    /// is [`Error::Config`]. Anything else (no answer, connection refused, too many
    /// connections) is the database being unavailable. Once serving, every connection
    /// failure stays `Unavailable`: the caller should keep its token and retry.
    pub(crate) fn connecting(e: deadpool_postgres::PoolError) -> Error {
        use tokio_postgres::error::SqlState;
        if let deadpool_postgres::PoolError::Backend(pg) = &e
            && let Some(code) = pg.code()
            && (code.code().starts_with("28") || *code == SqlState::INVALID_CATALOG_NAME)
        {
            return Error::Config(explained(pg));
        }
        Error::from(e)
    }
}

/// Whether an I/O error is the operator's to fix, by its kind (and, for what std does
/// not name yet, its errno), never by its text.
fn operator_must_fix(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        PermissionDenied
            | NotFound
            | NotADirectory
            | IsADirectory
            | DirectoryNotEmpty
            | ReadOnlyFilesystem
            | InvalidFilename
    ) || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        if transient(&e) {
            Error::Unavailable(explained(&e))
        } else {
            Error::Internal(explained(&e))
        }
    }
}

/// Whether a tokio-postgres error may go away by itself (connection loss, server
/// shutdown, resource exhaustion, a serialization conflict: the caller should retry)
/// rather than be a bug of this service (a constraint or syntax error, a row that does
/// not decode).
fn transient(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if let Some(code) = e.code() {
        let c = code.code();
        return c.starts_with("08")
            || c.starts_with("53")
            || c.starts_with("57P")
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::QUERY_CANCELED
            // A failover left us on a read-only standby.
            || *code == SqlState::READ_ONLY_SQL_TRANSACTION;
    }
    // No SQLSTATE. A closed connection is told by its kind.
    if e.is_closed() {
        return true;
    }
    // tokio-postgres's own checks of what this service sends and reads are bugs here.
    // It exposes no kind for them, and their causes vary (a decoding error may even
    // carry an io::Error), so its own text is the only signal: tests/it/errors.rs
    // produces each of them against a real server, so that a reworded message fails a
    // test, not a request.
    let text = e.to_string();
    if BUG_TEXTS.iter().any(|bug| text.contains(bug)) {
        return false;
    }
    // The rest is about the connection: an I/O failure (connect, read, write, the TLS
    // handshake), a server that refuses TLS, a protocol or authentication exchange that
    // broke. Retry.
    true
}

/// tokio-postgres's messages for what it refuses to send or decode (its `Display`,
/// without the cause).
const BUG_TEXTS: [&str; 5] = [
    // ToSql: a parameter of the wrong type.
    "error serializing parameter",
    // FromSql: a column of the wrong type, or NULL where none is expected.
    "error deserializing column",
    // A column name that is not in the row.
    "invalid column",
    // Too many or too few parameters for the statement.
    " parameters but got ",
    // query_one without exactly one row, a scalar query with more than one column.
    "query returned an unexpected number of",
];

/// An error with its causes, as one line. tokio-postgres's own text is only the kind
/// ("db error"): PostgreSQL's message (e.g. "password authentication failed for user
/// ...", which never contains the password) is in the cause.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Error::Unavailable(explained(&e))
    }
}

/// [`chain`], with a TLS problem said the way operators search for it.
fn explained(e: &(dyn std::error::Error + 'static)) -> String {
    let text = chain(e);
    match explain(e) {
        Some(said) => format!("{said}: {text}"),
        None => text,
    }
}

/// A TLS problem in a connection error, said the way operators search for it. A
/// certificate problem is found by its type among the causes ([`auth_tls::problem`]).
fn explain(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    use auth_tls::problem::{Problem, find};
    if let Some(problem) = find(e) {
        return Some(match problem {
            Problem::UnknownIssuer => {
                "certificate verify failed: unknown issuer (check sslrootcert)"
            }
            Problem::NotASystemRoot => {
                "certificate verify failed: unknown issuer, not one of the system's roots \
                 (sslrootcert=system; give the server's CA as sslrootcert=/path/to/ca.crt)"
            }
            Problem::NameMismatch => {
                "host name mismatch: the server's certificate is not for this host \
                 (check the host in the URL, or use sslmode=verify-ca)"
            }
            Problem::Expired => "certificate verify failed: the server's certificate has expired",
            Problem::NotYetValid => {
                "certificate verify failed: the server's certificate is not valid yet \
                 (check the clocks)"
            }
            Problem::BadSignature => "certificate verify failed: bad signature",
        });
    }
    // A server that answers the TLS request with "no" is said only in tokio-postgres's
    // own words (a string, the cause of its TLS error): tested in tests/it/errors.rs.
    let mut next = Some(e);
    while let Some(e) = next {
        if e.to_string() == "server does not support TLS" {
            return Some("the server does not accept TLS (sslmode requires it)");
        }
        next = e.source();
    }
    None
}

/// Database outages fail every call the same way: one line a second says it.
static OUTAGE_LOG: Every = Every::new(std::time::Duration::from_secs(1));

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
        let info = |reason: ErrorReason| {
            ErrorDetails::with_error_info(
                reason.as_str_name(),
                ERROR_DOMAIN,
                std::collections::HashMap::new(),
            )
        };
        match e {
            Error::Overloaded { retry_after, .. } => {
                let message = e.to_string();
                Status::with_error_details(
                    Code::Unavailable,
                    message,
                    ErrorDetails::with_retry_info(Some(retry_after)),
                )
            }
            Error::TooManyFailures { retry_after, .. } => {
                let mut details = info(ErrorReason::RateLimitExceeded);
                details.set_retry_info(Some(retry_after));
                Status::with_error_details(Code::ResourceExhausted, e.to_string(), details)
            }
            Error::CallerNotAllowed(message) => Status::with_error_details(
                Code::PermissionDenied,
                message,
                info(ErrorReason::CallerNotAllowed),
            ),
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
    fn only_configuration_errors_exit_2() {
        assert_eq!(
            Error::Config("--db-max-connections must be at least 2".into()).exit_code(),
            2
        );
        for runtime in [
            Error::Unavailable("connection refused".into()),
            Error::Internal("schema migration failed".into()),
            Error::Runtime("unhealthy".into()),
            Error::NotFound("no token".into()),
            Error::InvalidArgument("already revoked".into()),
        ] {
            assert_eq!(runtime.exit_code(), 1, "{runtime:?}");
        }
    }

    #[test]
    fn only_io_errors_the_operator_must_fix_exit_2() {
        use rustix::io::Errno;
        for errno in [
            Errno::ACCESS,
            Errno::PERM,
            Errno::NOENT,
            Errno::NOTDIR,
            Errno::ISDIR,
            Errno::NOTEMPTY,
            Errno::ROFS,
            Errno::NAMETOOLONG,
            Errno::LOOP,
        ] {
            let e = Error::io(
                "creating --data-dir",
                &std::io::Error::from_raw_os_error(errno.raw_os_error()),
            );
            assert_eq!(e.exit_code(), 2, "{errno:?}: {e}");
        }
        for errno in [
            Errno::NOSPC,
            Errno::DQUOT,
            Errno::IO,
            Errno::NOMEM,
            Errno::AGAIN,
            Errno::MFILE,
            Errno::INTR,
        ] {
            let e = Error::io(
                "creating --data-dir",
                &std::io::Error::from_raw_os_error(errno.raw_os_error()),
            );
            assert_eq!(e.exit_code(), 1, "{errno:?}: {e}");
            assert!(e.to_string().starts_with("creating --data-dir: "), "{e}");
        }
    }

    #[test]
    fn a_database_that_cannot_be_reached_at_startup_is_unavailable() {
        use deadpool_postgres::{PoolError, TimeoutType};
        assert!(matches!(
            Error::connecting(PoolError::Timeout(TimeoutType::Create)),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            Error::connecting(PoolError::Closed),
            Error::Unavailable(_)
        ));
    }

    #[test]
    fn expired_message_names_the_time_and_the_fix() {
        let msg = Error::TokenExpired(DateTime::UNIX_EPOCH).to_string();
        assert!(msg.contains("1970-01-01T00:00:00Z"), "{msg}");
        assert!(msg.contains("create a new token"), "{msg}");
    }

    #[test]
    fn certificate_problems_are_said_plainly_found_by_type() {
        use tokio_rustls::rustls::{CertificateError, Error as TlsError};
        /// A connection error as tokio-postgres hands it over: its own error, caused by
        /// tokio-rustls' io::Error, which wraps rustls' error.
        #[derive(Debug, thiserror::Error)]
        #[error("error performing TLS handshake")]
        struct Handshake(#[source] std::io::Error);
        let failed = |e: CertificateError| {
            explain(&Handshake(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                TlsError::InvalidCertificate(e),
            )))
        };
        assert_eq!(
            failed(CertificateError::UnknownIssuer),
            Some("certificate verify failed: unknown issuer (check sslrootcert)")
        );
        assert!(
            failed(CertificateError::NotValidForName)
                .unwrap()
                .starts_with("host name mismatch")
        );
        // The words alone are not enough: a message that merely mentions them is not a
        // certificate problem.
        let mentions = Handshake(std::io::Error::other("UnknownIssuer NotValidForName"));
        assert_eq!(explain(&mentions), None);
        assert_eq!(
            explain(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            None
        );
    }
}

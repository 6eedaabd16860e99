//! What a call answers: [`Identity`] and [`RenewOutcome`] on success, a [`Rejection`]
//! when the token is refused, [`Unavailable`] when the service could not judge it. The
//! two failures are different types so that an outage can never be taken for a
//! rejection: [`Outcome`] nests them, and [`classify`] is the one place where a gRPC
//! status becomes one or the other.
use std::{
    collections::HashMap,
    error::Error as _,
    sync::Arc,
    time::{Duration, SystemTime},
};

use auth_api::{ERROR_DOMAIN, ErrorReason};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// A call's answer: `Err` only when the service could not answer (retry later, keep the
/// token); `Ok(Err(_))` when it refused the token.
pub type Outcome<T> = Result<Result<T, Rejection>, Unavailable>;

/// Who a valid token belongs to: its fields are [`IdentityData`]'s (`id.user_id`,
/// `id.scopes`, ...). Cloning it is one reference count, not five allocations: the
/// layer hands one to every request it lets through, and axum's `Extension` extractor
/// clones it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(Arc<IdentityData>);

impl Identity {
    /// An identity with these fields.
    pub fn new(data: IdentityData) -> Identity {
        Identity(Arc::new(data))
    }
}

impl std::ops::Deref for Identity {
    type Target = IdentityData;

    fn deref(&self) -> &IdentityData {
        &self.0
    }
}

impl From<IdentityData> for Identity {
    fn from(data: IdentityData) -> Identity {
        Identity::new(data)
    }
}

/// The fields of an [`Identity`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityData {
    /// The token's stable id (a UUID; safe to log).
    pub token_id: String,
    /// The user the token belongs to.
    pub user_id: String,
    /// The token's human-readable name.
    pub name: String,
    /// The scopes granted to the token.
    pub scopes: Vec<String>,
    /// When it expires; `None` for a token that never expires.
    pub expires_at: Option<SystemTime>,
}

impl IdentityData {
    /// Whether the token holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// The scopes of `required` the token lacks, in order.
    pub fn missing_scopes(&self, required: &[String]) -> Vec<String> {
        required
            .iter()
            .filter(|want| !self.has_scope(want))
            .cloned()
            .collect()
    }

    /// Bytes it takes (for the cache's weigher).
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.token_id.len()
            + self.user_id.len()
            + self.name.len()
            + self
                .scopes
                .iter()
                .map(|s| s.len() + std::mem::size_of::<String>())
                .sum::<usize>()
    }
}

/// What `RenewCurrentToken` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewOutcome {
    /// The expiry after the call; `None` for a token that never expires.
    pub expires_at: Option<SystemTime>,
    /// True only when this call extended the expiry.
    pub renewed: bool,
    /// The earliest time a renewal would extend the token again; `None` when none can.
    pub next_renewal_at: Option<SystemTime>,
}

/// Why a token was refused: the `auth.v1` `ErrorReason`s of a credential problem, plus
/// the layer's own missing scope. The message of each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No bearer token was presented.
    #[error("no token: send `Authorization: Bearer <token>`")]
    MissingCredentials,
    /// Not a token this service issues (prefix, length, characters, checksum), or more
    /// than one `Authorization` header.
    #[error(
        "not a token this service issues (wrong prefix, length, characters or checksum): \
         check that it was copied whole"
    )]
    TokenMalformed,
    /// Well formed, but never issued (or deleted).
    #[error(
        "token is not known to this service: it was never issued here or was deleted; \
         create a new token"
    )]
    TokenUnknown,
    /// Past its expiry.
    #[error("token expired: create a new token and log in again")]
    TokenExpired,
    /// Revoked.
    #[error("token was revoked: create a new token and log in again")]
    TokenRevoked,
    /// A live token without these scopes, which the route requires.
    #[error("the token lacks the required scope {}: create a token with it", .missing.join(" "))]
    InsufficientScope {
        /// The required scopes the token lacks.
        missing: Vec<String>,
    },
    /// Refused in words this client does not know: `UNAUTHENTICATED` without the
    /// service's `ErrorInfo` (`UNAUTHENTICATED`; a proxy in between), another domain's
    /// (`DOMAIN/REASON`), or a reason newer than this client.
    #[error("token refused ({0})")]
    Other(String),
}

impl Rejection {
    /// The `auth.v1` reason, for every variant but [`Rejection::Other`].
    pub fn reason(&self) -> Option<ErrorReason> {
        Some(match self {
            Rejection::MissingCredentials => ErrorReason::MissingCredentials,
            Rejection::TokenMalformed => ErrorReason::TokenMalformed,
            Rejection::TokenUnknown => ErrorReason::TokenUnknown,
            Rejection::TokenExpired => ErrorReason::TokenExpired,
            Rejection::TokenRevoked => ErrorReason::TokenRevoked,
            Rejection::InsufficientScope { .. } => ErrorReason::InsufficientScope,
            Rejection::Other(_) => return None,
        })
    }

    /// The wire spelling, as logs and metrics print it (`TOKEN_REVOKED`).
    pub fn as_str(&self) -> &str {
        match (self.reason(), self) {
            (Some(reason), _) => reason.as_str_name(),
            (None, Rejection::Other(other)) => other,
            (None, _) => "UNAUTHENTICATED",
        }
    }

    /// The rejection for a wire reason of the `auth.v1` domain.
    pub fn from_wire(reason: &str) -> Rejection {
        match ErrorReason::from_str_name(reason) {
            Some(ErrorReason::MissingCredentials) => Rejection::MissingCredentials,
            Some(ErrorReason::TokenMalformed) => Rejection::TokenMalformed,
            Some(ErrorReason::TokenUnknown) => Rejection::TokenUnknown,
            Some(ErrorReason::TokenExpired) => Rejection::TokenExpired,
            Some(ErrorReason::TokenRevoked) => Rejection::TokenRevoked,
            _ => Rejection::Other(reason.to_owned()),
        }
    }

    /// A token that can never become valid again (expired, revoked).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Rejection::TokenExpired | Rejection::TokenRevoked)
    }
}

impl From<&auth_api::token::Malformed> for Rejection {
    fn from(malformed: &auth_api::token::Malformed) -> Rejection {
        match malformed.reason() {
            ErrorReason::MissingCredentials => Rejection::MissingCredentials,
            _ => Rejection::TokenMalformed,
        }
    }
}

/// The service could not judge the token: it is down, slow, unreachable, shedding load,
/// refused this caller, or answered something unexpected. Not a judgement of the token:
/// retry later, and keep it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auth service unavailable ({}: {cause})", code_name(*.code))]
pub struct Unavailable {
    code: Code,
    cause: String,
    retry_after: Option<Duration>,
    reason: Option<ErrorReason>,
}

impl Unavailable {
    /// An outage found on this side (no answer in time, nothing to connect to).
    pub fn new(code: Code, cause: impl Into<String>) -> Unavailable {
        Unavailable {
            code,
            cause: cause.into(),
            retry_after: None,
            reason: None,
        }
    }

    /// The gRPC code: `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `PERMISSION_DENIED` (this
    /// caller is not on the service's `--validate-allow`), `INTERNAL`, ...
    pub fn code(&self) -> Code {
        self.code
    }

    /// The status message and its causes (transport, DNS, TLS), as one line.
    pub fn cause(&self) -> &str {
        &self.cause
    }

    /// How long the server asked to wait (`google.rpc.RetryInfo`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The `ErrorInfo` reason, when the server sent one (`CALLER_NOT_ALLOWED`,
    /// `RATE_LIMIT_EXCEEDED`).
    pub fn reason(&self) -> Option<ErrorReason> {
        self.reason
    }
}

/// The one mapping from a status to what it means: only `UNAUTHENTICATED` is a
/// rejection of the token; everything else is [`Unavailable`].
pub fn classify(status: &Status) -> Result<Rejection, Unavailable> {
    let details = status.get_error_details();
    let info = details.error_info();
    if status.code() == Code::Unauthenticated {
        return Ok(match info {
            Some(info) if info.domain == ERROR_DOMAIN => Rejection::from_wire(&info.reason),
            Some(info) => Rejection::Other(format!("{}/{}", info.domain, info.reason)),
            None => Rejection::Other("UNAUTHENTICATED".to_owned()),
        });
    }
    Err(Unavailable {
        code: status.code(),
        cause: describe(status),
        retry_after: details.retry_info().and_then(|r| r.retry_delay),
        reason: info
            .filter(|i| i.domain == ERROR_DOMAIN)
            .and_then(|i| ErrorReason::from_str_name(&i.reason)),
    })
}

/// The status a server of this contract sends for `rejection` (the layer's gRPC face):
/// `UNAUTHENTICATED` with the service's `ErrorInfo`, or `PERMISSION_DENIED` with
/// `INSUFFICIENT_SCOPE` and the missing scopes in its `scope` metadata.
pub fn rejection_status(rejection: &Rejection) -> Status {
    let message = rejection.to_string();
    match (rejection, rejection.reason()) {
        (Rejection::InsufficientScope { missing }, Some(reason)) => {
            let metadata = HashMap::from([("scope".to_owned(), missing.join(" "))]);
            let details =
                ErrorDetails::with_error_info(reason.as_str_name(), ERROR_DOMAIN, metadata);
            Status::with_error_details(Code::PermissionDenied, message, details)
        }
        (_, Some(reason)) => {
            let details =
                ErrorDetails::with_error_info(reason.as_str_name(), ERROR_DOMAIN, HashMap::new());
            Status::with_error_details(Code::Unauthenticated, message, details)
        }
        // Not ours to name: refused, without a reason of the contract.
        (_, None) => Status::unauthenticated(message),
    }
}

/// The status message followed by its chain of causes, which is where tonic puts the
/// useful part of a transport error ("connection refused", a DNS failure).
fn describe(status: &Status) -> String {
    let mut text = status.message().to_owned();
    let mut cause = status.source();
    while let Some(err) = cause {
        let next = err.to_string();
        if !text.contains(&next) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&next);
        }
        cause = err.source();
    }
    if text.is_empty() {
        "no details".to_owned()
    } else {
        text
    }
}

/// The canonical gRPC name of a code, as operators read it in other tools.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unauthenticated(reason: &str, domain: &str) -> Status {
        let details = ErrorDetails::with_error_info(reason, domain, HashMap::new());
        Status::with_error_details(Code::Unauthenticated, "refused", details)
    }

    #[test]
    fn only_unauthenticated_is_a_rejection() {
        for (wire, want) in [
            ("MISSING_CREDENTIALS", Rejection::MissingCredentials),
            ("TOKEN_MALFORMED", Rejection::TokenMalformed),
            ("TOKEN_UNKNOWN", Rejection::TokenUnknown),
            ("TOKEN_EXPIRED", Rejection::TokenExpired),
            ("TOKEN_REVOKED", Rejection::TokenRevoked),
        ] {
            let got = classify(&unauthenticated(wire, ERROR_DOMAIN)).unwrap();
            assert_eq!(got, want);
            assert_eq!(got.as_str(), wire);
        }
        assert_eq!(
            classify(&Status::unauthenticated("x")).unwrap(),
            Rejection::Other("UNAUTHENTICATED".into())
        );
        assert_eq!(
            classify(&unauthenticated("JWT_BAD", "mesh.example")).unwrap(),
            Rejection::Other("mesh.example/JWT_BAD".into())
        );
        assert_eq!(
            classify(&unauthenticated("NEW_ONE", ERROR_DOMAIN)).unwrap(),
            Rejection::Other("NEW_ONE".into())
        );
        for status in [
            Status::unavailable("database down"),
            Status::internal("boom"),
            Status::deadline_exceeded("slow"),
            Status::permission_denied("not on the list"),
            Status::resource_exhausted("too many"),
        ] {
            let outage = classify(&status).unwrap_err();
            assert_eq!(outage.code(), status.code());
            assert!(outage.to_string().contains(code_name(status.code())));
        }
    }

    #[test]
    fn retry_info_and_reasons_travel_with_an_outage() {
        let mut details = ErrorDetails::with_retry_info(Some(Duration::from_secs(2)));
        details.set_error_info("CALLER_NOT_ALLOWED", ERROR_DOMAIN, HashMap::new());
        let status = Status::with_error_details(Code::PermissionDenied, "no", details);
        let outage = classify(&status).unwrap_err();
        assert_eq!(outage.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(outage.reason(), Some(ErrorReason::CallerNotAllowed));
    }

    #[test]
    fn the_layer_speaks_the_service_s_statuses() {
        let status = rejection_status(&Rejection::TokenRevoked);
        assert_eq!(status.code(), Code::Unauthenticated);
        let info = status.get_error_details().error_info().cloned().unwrap();
        assert_eq!(
            (info.domain.as_str(), info.reason.as_str()),
            (ERROR_DOMAIN, "TOKEN_REVOKED")
        );
        let scope = rejection_status(&Rejection::InsufficientScope {
            missing: vec!["billing:write".into()],
        });
        assert_eq!(scope.code(), Code::PermissionDenied);
        let info = scope.get_error_details().error_info().cloned().unwrap();
        assert_eq!(info.reason, "INSUFFICIENT_SCOPE");
        assert_eq!(info.metadata["scope"], "billing:write");
        // A rejection always round-trips through the one mapping.
        for r in [Rejection::TokenExpired, Rejection::MissingCredentials] {
            assert_eq!(classify(&rejection_status(&r)).unwrap(), r);
        }
    }

    #[test]
    fn missing_scopes_in_order() {
        let id = Identity::new(IdentityData {
            token_id: "t".into(),
            user_id: "u".into(),
            name: "n".into(),
            scopes: vec!["a".into(), "c".into()],
            expires_at: None,
        });
        let required: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        assert_eq!(id.missing_scopes(&required), ["b", "d"]);
    }
}

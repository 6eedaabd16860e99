//! The agent's one error type. Each variant says what to do next (log in again, retry
//! later, fix the configuration). What a call's answer means is auth-client's
//! (`auth_client::outcome::classify`, the one mapping of a status); what the agent does
//! about it is here, in [`AgentError::from_outcome`]. [`RejectReason`] is why a token was
//! refused.
use std::{
    fmt, io,
    path::{Path, PathBuf},
};

use auth_api::ErrorReason;
pub(crate) use auth_client::outcome::code_name;
use auth_client::{Outcome, Rejection, Unavailable};

/// Why a token cannot be used: the `google.rpc.ErrorInfo` reason sent by the server, or
/// the same vocabulary for problems found locally (no token, not a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// A reason of the `auth.v1` contract.
    Known(ErrorReason),
    /// A reason this agent does not know (a newer server, or a proxy in between).
    Other(String),
}

impl RejectReason {
    /// No token was presented (or none is configured).
    pub(crate) const MISSING_CREDENTIALS: RejectReason =
        RejectReason::Known(ErrorReason::MissingCredentials);
    /// The string is not a token.
    pub(crate) const TOKEN_MALFORMED: RejectReason =
        RejectReason::Known(ErrorReason::TokenMalformed);

    /// The reason of an auth-client rejection.
    pub(crate) fn from_rejection(rejection: &Rejection) -> Self {
        match rejection.reason() {
            Some(known) => Self::Known(known),
            None => Self::Other(rejection.as_str().to_owned()),
        }
    }

    /// The wire spelling, as printed in messages and metrics.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Known(reason) => reason.as_str_name(),
            Self::Other(other) => other,
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, phrased as what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The token is missing, not a token, or rejected by the server: a person must log in
    /// again (or rotate the Secret). Retrying with the same token cannot help, but the
    /// daemon keeps re-reading its token source so that it recovers once this is fixed.
    #[error("{}", rejection_message(reason, detail.as_deref(), fix))]
    Reauthenticate {
        /// The `ErrorInfo` reason, or the same vocabulary for a local finding.
        reason: RejectReason,
        /// What was found locally (never text from the server).
        detail: Option<String>,
        /// The exact command or action that fixes it, from the token source.
        fix: String,
    },
    /// Not a login problem: the server is down, slow, unreachable or answered with an
    /// unexpected error. Retry later with backoff, and keep the token.
    #[error("server unavailable ({code}: {cause}); not a login problem, retry later")]
    RetryLater {
        /// The gRPC code name, e.g. `UNAVAILABLE` or `DEADLINE_EXCEEDED`.
        code: &'static str,
        /// The status message and its causes (transport, DNS, TLS).
        cause: String,
    },
    /// The configuration is wrong and nothing will work until it is fixed; the message
    /// names the flag, variable or file to change.
    #[error("{0}")]
    FixConfig(String),
    /// A local file could not be read or written; the message names it.
    #[error("cannot {action} {}: {source}", path.display())]
    LocalFile {
        /// What was being done, e.g. "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn rejection_message(reason: &RejectReason, detail: Option<&str>, fix: &str) -> String {
    match detail {
        None => format!("token rejected ({reason}): {fix}"),
        Some(detail) => format!("no usable token ({reason}: {detail}): {fix}"),
    }
}

impl AgentError {
    /// What a call's answer means for the agent: a refused token is a login problem,
    /// whose message ends in `fix` (the action that gives the agent a good token);
    /// anything the server could not judge is retried.
    pub(crate) fn from_outcome<T>(outcome: Outcome<T>, fix: &str) -> Result<T, AgentError> {
        match outcome {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(rejection)) => Err(AgentError::rejected(&rejection, fix)),
            Err(outage) => Err(AgentError::retry_later(&outage)),
        }
    }

    /// The server refused the token: log in again.
    pub(crate) fn rejected(rejection: &Rejection, fix: &str) -> AgentError {
        AgentError::Reauthenticate {
            reason: RejectReason::from_rejection(rejection),
            detail: None,
            fix: fix.to_owned(),
        }
    }

    /// The server could not judge the token: retry later. A TLS certificate the agent
    /// does not trust is no login problem either: it is retried like an outage, with
    /// the fix named.
    pub(crate) fn retry_later(outage: &Unavailable) -> AgentError {
        let mut cause = outage.cause().to_owned();
        if ["certificate", "UnknownIssuer", "NotValidForName"]
            .iter()
            .any(|hint| cause.contains(hint))
        {
            cause.push_str(
                "; a TLS certificate problem: check --ca-file / AUTH_AGENT_CA_FILE (the CA \
                 that signed the server's certificate) and that the server's certificate is \
                 valid for the host in --server",
            );
        }
        AgentError::RetryLater {
            code: code_name(outage.code()),
            cause,
        }
    }

    /// A local file error: a file that does not parse (`InvalidData`) is a configuration
    /// error naming the file and `fix`; any other is the OS error on that file.
    pub(crate) fn file(err: io::Error, action: &'static str, path: &Path, fix: &str) -> AgentError {
        if err.kind() == io::ErrorKind::InvalidData {
            AgentError::FixConfig(format!("{}: {err}; {fix}", path.display()))
        } else {
            AgentError::LocalFile {
                action,
                path: path.to_owned(),
                source: err,
            }
        }
    }

    /// The process exit code for a one-shot command: 3 log in again, 1 retry later,
    /// 2 fix the configuration (clap also exits 2 on a usage error).
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Reauthenticate { .. } => 3,
            AgentError::RetryLater { .. } => 1,
            AgentError::FixConfig(_) | AgentError::LocalFile { .. } => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use auth_api::ERROR_DOMAIN;
    use auth_client::outcome::classify;
    use tonic::{Code, Status};
    use tonic_types::{ErrorDetails, StatusExt};

    use super::*;

    const FIX: &str = "run `auth-agent login` to re-authenticate";

    /// What the agent makes of `status`, through auth-client's one mapping of a status
    /// (`classify`), as `from_outcome` does with a call's answer.
    fn from_status(status: &Status) -> AgentError {
        match classify(status) {
            Ok(rejection) => AgentError::rejected(&rejection, FIX),
            Err(outage) => AgentError::retry_later(&outage),
        }
    }

    fn unauthenticated(reason: &str, domain: &str) -> Status {
        let details = ErrorDetails::with_error_info(reason, domain, HashMap::new());
        Status::with_error_details(Code::Unauthenticated, "token expired", details)
    }

    #[test]
    fn every_wire_reason_becomes_a_rejection_with_the_fix() {
        for reason in [
            "MISSING_CREDENTIALS",
            "TOKEN_MALFORMED",
            "TOKEN_UNKNOWN",
            "TOKEN_EXPIRED",
            "TOKEN_REVOKED",
        ] {
            let err = from_status(&unauthenticated(reason, ERROR_DOMAIN));
            assert!(matches!(err, AgentError::Reauthenticate { .. }));
            assert_eq!(err.exit_code(), 3);
            assert_eq!(
                err.to_string(),
                format!("token rejected ({reason}): run `auth-agent login` to re-authenticate")
            );
        }
    }

    #[test]
    fn unauthenticated_without_our_error_info_is_still_a_rejection() {
        let bare = from_status(&Status::unauthenticated("nope"));
        assert!(
            bare.to_string()
                .starts_with("token rejected (UNAUTHENTICATED):"),
            "{bare}"
        );
        let foreign = from_status(&unauthenticated("JWT_BAD", "mesh.example"));
        assert!(
            foreign.to_string().contains("(mesh.example/JWT_BAD)"),
            "{foreign}"
        );
    }

    #[test]
    fn everything_else_is_retried_and_never_mentions_login() {
        for status in [
            Status::unavailable("database down"),
            Status::internal("boom"),
            Status::deadline_exceeded("no answer within 15s"),
            Status::unknown("transport error"),
            Status::permission_denied("not yours"),
        ] {
            let err = from_status(&status);
            assert!(matches!(err, AgentError::RetryLater { .. }), "{err:?}");
            assert_eq!(err.exit_code(), 1);
            assert!(
                !err.to_string().contains("auth-agent login")
                    && !err.to_string().contains("rejected"),
                "{err}"
            );
            assert!(err.to_string().contains(code_name(status.code())), "{err}");
        }
    }

    #[test]
    fn a_certificate_problem_is_retried_and_names_the_ca_file() {
        let status =
            Status::unavailable("tcp connect error: invalid peer certificate: UnknownIssuer");
        let err = from_status(&status);
        assert!(matches!(err, AgentError::RetryLater { .. }));
        let text = err.to_string();
        assert!(
            text.contains("certificate") && text.contains("--ca-file"),
            "{text}"
        );
        assert!(!text.contains("auth-agent login"), "{text}");
    }

    #[test]
    fn local_findings_say_what_was_found() {
        let err = AgentError::Reauthenticate {
            reason: RejectReason::MISSING_CREDENTIALS,
            detail: Some("no config file at /x".into()),
            fix: FIX.into(),
        };
        assert_eq!(
            err.to_string(),
            "no usable token (MISSING_CREDENTIALS: no config file at /x): run `auth-agent login` to re-authenticate"
        );
    }
}

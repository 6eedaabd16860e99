//! What an HTTP refusal looks like, for every HTTP face of the contract (auth-service's
//! forward-auth, auth-client's `AuthLayer`): the RFC 6750 `WWW-Authenticate` challenge
//! and the small JSON body that carries the `ErrorInfo` reason.
use crate::{ERROR_DOMAIN, ErrorReason};

/// What the service calls itself in challenges.
pub(crate) const REALM: &str = "auth";

/// The `WWW-Authenticate` value for a credential problem (RFC 6750 §3). A request that
/// carried no bearer token at all (`reason` is `MISSING_CREDENTIALS`, or unknown) gets
/// the bare challenge, as §3.1 asks; any other problem is `invalid_token`, with what to
/// do in `error_description`.
pub fn challenge(reason: Option<ErrorReason>, description: &str) -> String {
    match reason {
        Some(ErrorReason::MissingCredentials) | None => format!("Bearer realm=\"{REALM}\""),
        Some(_) => format!(
            "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
            quotable(description)
        ),
    }
}

/// The `WWW-Authenticate` value for a live token that lacks required scopes (RFC 6750
/// §3.1 `insufficient_scope`, with the missing scopes in `scope`).
pub fn scope_challenge(missing: &[String]) -> String {
    format!(
        "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{}\", \
         scope=\"{}\"",
        quotable(&scope_message(missing)),
        quotable(&missing.join(" "))
    )
}

/// What a 403 (or a PERMISSION_DENIED) for missing scopes says.
pub fn scope_message(missing: &[String]) -> String {
    format!(
        "the token lacks the required scope {}: create a token with it",
        missing.join(" ")
    )
}

/// The small JSON body of a refusal: the ErrorInfo reason (as in the gRPC API's
/// details) and the message.
pub fn body(reason: ErrorReason, message: &str) -> String {
    serde_json::json!({
        "reason": reason.as_str_name(),
        "domain": ERROR_DOMAIN,
        "message": message,
    })
    .to_string()
}

/// `text` as RFC 6750 allows inside a quoted `error_description` or `scope`: printable
/// ASCII without `"` and `\`. Anything else becomes `?`, never a broken header.
pub fn quotable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bare_challenge_for_no_token_invalid_token_for_the_rest() {
        assert_eq!(
            challenge(Some(ErrorReason::MissingCredentials), "x"),
            r#"Bearer realm="auth""#
        );
        assert_eq!(
            challenge(
                Some(ErrorReason::TokenExpired),
                "token expired at T; create one"
            ),
            r#"Bearer realm="auth", error="invalid_token", error_description="token expired at T; create one""#
        );
    }

    #[test]
    fn descriptions_stay_inside_their_quotes() {
        let c = challenge(
            Some(ErrorReason::TokenMalformed),
            "a \"quoted\" \\ é\r\nvalue",
        );
        assert!(
            c.ends_with(r#"error_description="a ?quoted? ? ???value""#),
            "{c}"
        );
        let s = scope_challenge(&["billing:read".into(), "x\"y".into()]);
        assert!(s.ends_with(r#"scope="billing:read x?y""#), "{s}");
        assert!(s.contains(r#"error="insufficient_scope""#), "{s}");
    }

    #[test]
    fn the_body_is_json_with_the_reason() {
        let b: serde_json::Value =
            serde_json::from_str(&body(ErrorReason::TokenRevoked, "say \"why\"")).unwrap();
        assert_eq!(b["reason"], "TOKEN_REVOKED");
        assert_eq!(b["message"], "say \"why\"");
        assert_eq!(b["domain"], ERROR_DOMAIN);
    }
}

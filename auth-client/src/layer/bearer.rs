//! The token of a request: its one `Authorization: Bearer <token>` header, read by the
//! service's rules (scheme in any case, spaces or tabs around and between, printable
//! ASCII only, exactly one header).
use http::{HeaderMap, header::AUTHORIZATION};

use crate::outcome::Rejection;

/// The bearer token of `headers`, or why there is none.
pub fn bearer(headers: &HeaderMap) -> Result<&str, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Rejection::MissingCredentials);
    };
    if values.next().is_some() {
        // Which one the service behind would read is not for us to guess.
        return Err(Rejection::TokenMalformed);
    }
    parse(value.as_bytes())
}

/// Parses an `Authorization` value (`Bearer <token>`).
pub fn parse(value: &[u8]) -> Result<&str, Rejection> {
    let blank = |c: char| c == ' ' || c == '\t';
    let value = std::str::from_utf8(value)
        .ok()
        .filter(|v| v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
        .ok_or(Rejection::TokenMalformed)?
        .trim_matches(blank);
    let (scheme, token) = value.split_once(blank).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::MissingCredentials);
    }
    match token.trim_matches(blank) {
        "" => Err(Rejection::MissingCredentials),
        token => Ok(token),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_blanks_and_bytes() {
        assert_eq!(parse(b"Bearer pat_x"), Ok("pat_x"));
        assert_eq!(parse(b"\tbearer \t pat_x "), Ok("pat_x"));
        assert_eq!(parse(b"Basic pat_x"), Err(Rejection::MissingCredentials));
        assert_eq!(parse(b"pat_x"), Err(Rejection::MissingCredentials));
        assert_eq!(parse(b"Bearer"), Err(Rejection::MissingCredentials));
        assert_eq!(parse(b"Bearer \xff"), Err(Rejection::TokenMalformed));
        assert_eq!(parse(b"Bearer a\r\n"), Err(Rejection::TokenMalformed));
    }

    #[test]
    fn exactly_one_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), Err(Rejection::MissingCredentials));
        headers.append(AUTHORIZATION, "Bearer a".parse().unwrap());
        assert_eq!(bearer(&headers), Ok("a"));
        headers.append(AUTHORIZATION, "Bearer b".parse().unwrap());
        assert_eq!(bearer(&headers), Err(Rejection::TokenMalformed));
    }
}

//! Fuzzes the parsing of `authorization` metadata (`parse_bearer`) with arbitrary bytes:
//! it must never panic, refuse with a credential reason, and read the same token however
//! the scheme is cased and spaced.
#![no_main]

use auth_api::ErrorReason;
use auth_service::{
    error::Result,
    service::credentials::parse_bearer,
    token::{self, Prefix, TokenDigest},
};
use libfuzzer_sys::fuzz_target;

/// The answer with the error reduced to its reason: messages may differ between
/// equivalent refusals (a blank more changes the length), reasons may not.
fn outcome(r: Result<TokenDigest>) -> Result<TokenDigest, Option<ErrorReason>> {
    r.map_err(|e| e.reason())
}

fn printable(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b)
}

fn blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fuzz_target!(|data: &[u8]| {
    let prefix = Prefix::default();
    let answer = outcome(parse_bearer(data, &prefix));
    if let Err(reason) = &answer {
        assert!(
            *reason == Some(ErrorReason::MissingCredentials)
                || *reason == Some(ErrorReason::TokenMalformed),
            "{reason:?}"
        );
    }
    let Some(value) = data
        .iter()
        .all(|&b| printable(b))
        .then(|| std::str::from_utf8(data).ok())
        .flatten()
    else {
        assert_eq!(answer, Err(Some(ErrorReason::TokenMalformed)));
        return;
    };

    // Blanks around the value change nothing, not even the message.
    let padded = format!(" \t{value}\t ");
    assert_eq!(
        parse_bearer(padded.as_bytes(), &prefix).map_err(|e| e.to_string()),
        parse_bearer(data, &prefix).map_err(|e| e.to_string())
    );

    // Any run of blanks between words reads as one space, the canonical form.
    let words: Vec<&str> = value.split(blank).filter(|w| !w.is_empty()).collect();
    let canonical = words.join(" ");
    assert_eq!(outcome(parse_bearer(canonical.as_bytes(), &prefix)), answer);

    // Accepted means exactly `<bearer in any case> <token>`, and the token's digest.
    if let Ok(digest) = &answer {
        assert_eq!(words.len(), 2, "{value:?}");
        assert!(words[0].eq_ignore_ascii_case("bearer"), "{value:?}");
        assert_eq!(token::parse(&prefix, words[1]).ok().as_ref(), Some(digest));
    }
});

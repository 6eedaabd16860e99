//! Tokens on the service side: issuing them, and turning a presented one into what the
//! database is asked about. The format itself (prefix, length, alphabet, checksum) is
//! the wire contract and lives in `auth_api::token`.
//!
//! Only the SHA-256 of the whole token is stored. A fast hash is right here because the
//! input has 178 bits of entropy (nothing to brute-force), unlike a password.
use std::fmt;

pub use auth_api::token::Prefix;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// How many characters after the prefix are kept for display (`pat_AbCd`).
const DISPLAY_CHARS: usize = 4;

/// A raw token. Its `Debug` is redacted so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct RawToken(String);

impl RawToken {
    /// The secret itself: for printing once at creation, and for clients.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RawToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawToken(<redacted>)")
    }
}

/// What the database stores about a token's secret: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDigest {
    /// SHA-256 of the whole token string.
    pub hash: [u8; 32],
    /// The prefix and the first few random characters, for `token list`.
    pub display_prefix: String,
}

/// Draws a new token from the OS CSPRNG.
pub fn generate(prefix: &Prefix) -> Result<RawToken> {
    auth_api::token::generate(prefix)
        .map(RawToken)
        .map_err(|e| Error::Internal(format!("OS random source: {e}")))
}

/// Checks the format and checksum of a presented token and returns what to look up.
/// No database work happens for a string that fails here.
pub fn parse(prefix: &Prefix, presented: &str) -> Result<TokenDigest> {
    auth_api::token::check(prefix, presented).map_err(|why| match why.reason() {
        auth_api::ErrorReason::MissingCredentials => Error::MissingCredentials(why.to_string()),
        _ => Error::TokenMalformed(format!(
            "token is malformed ({why}); check that it was copied whole, or create a new one"
        )),
    })?;
    Ok(digest(presented, prefix))
}

fn digest(token: &str, prefix: &Prefix) -> TokenDigest {
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let shown = prefix.as_str().len() + DISPLAY_CHARS;
    TokenDigest {
        hash,
        display_prefix: token.get(..shown).unwrap_or(token).to_string(),
    }
}

/// The digest of a token this process just generated.
pub fn digest_of(token: &RawToken, prefix: &Prefix) -> TokenDigest {
    digest(token.expose(), prefix)
}

#[cfg(test)]
mod tests {
    use auth_api::ErrorReason;

    use super::*;

    fn reason(r: Result<TokenDigest>) -> ErrorReason {
        r.unwrap_err().reason().unwrap()
    }

    #[test]
    fn generated_tokens_parse_to_their_digest() {
        let p = Prefix::default();
        let a = generate(&p).unwrap();
        let d = parse(&p, a.expose()).unwrap();
        assert_eq!(d, digest_of(&a, &p));
        assert_eq!(d.display_prefix, a.expose()[..8]);
        let b = generate(&p).unwrap();
        assert_ne!(parse(&p, b.expose()).unwrap().hash, d.hash);
    }

    #[test]
    fn garbage_is_malformed_and_empty_is_missing() {
        let p = Prefix::default();
        assert_eq!(reason(parse(&p, "")), ErrorReason::MissingCredentials);
        let long = "pat_".to_string() + &"a".repeat(1 << 20);
        let sql = "pat_' OR 1=1; DROP TABLE tokens; --aaaa";
        let non_ascii = "pat_é".to_string() + &"a".repeat(34);
        for bad in ["hello", "pat_", sql, &long, &non_ascii] {
            assert_eq!(
                reason(parse(&p, bad)),
                ErrorReason::TokenMalformed,
                "{bad:.20}"
            );
        }
        let message = parse(&p, "ghp_x").unwrap_err().to_string();
        assert!(
            message.contains("`pat_`") && message.contains("copied whole"),
            "{message}"
        );
    }

    #[test]
    fn debug_is_redacted() {
        let t = generate(&Prefix::default()).unwrap();
        assert!(!format!("{t:?}").contains(t.expose()));
    }
}

#[cfg(test)]
mod properties {
    //! Property tests of `parse`: it agrees with `digest_of` on every token, refuses every
    //! typo as `TOKEN_MALFORMED`, and never panics.
    use auth_api::{ErrorReason, token::with_random};
    use proptest::prelude::*;

    use super::*;

    fn prefix() -> impl Strategy<Value = Prefix> {
        "[a-z0-9]{1,16}_".prop_map(|p| Prefix::new(&p).unwrap())
    }

    fn token() -> impl Strategy<Value = (Prefix, String)> {
        (prefix(), "[0-9A-Za-z]{30}").prop_map(|(p, random)| {
            let t = with_random(&p, &random).unwrap();
            (p, t)
        })
    }

    proptest! {
        #[test]
        fn a_token_parses_to_the_digest_it_was_issued_with((p, t) in token()) {
            let d = parse(&p, &t).unwrap();
            prop_assert_eq!(&d, &digest_of(&RawToken(t.clone()), &p));
            prop_assert_eq!(d.display_prefix.len(), p.as_str().len() + DISPLAY_CHARS);
            prop_assert!(t.starts_with(&d.display_prefix));
        }

        #[test]
        fn any_string_parses_without_panicking(s in any::<String>()) {
            let p = Prefix::default();
            match parse(&p, &s) {
                Ok(d) => prop_assert_eq!(d, digest_of(&RawToken(s), &p)),
                Err(e) => {
                    let expected = if s.is_empty() {
                        ErrorReason::MissingCredentials
                    } else {
                        ErrorReason::TokenMalformed
                    };
                    prop_assert_eq!(e.reason(), Some(expected));
                }
            }
        }

        #[test]
        fn every_single_character_change_is_token_malformed(
            (p, t) in token(),
            replacement in prop_oneof![proptest::char::range('\0', '\x7f'), any::<char>()],
        ) {
            for (i, original) in t.char_indices().filter(|&(_, c)| c != replacement) {
                let mut typo = t.clone();
                typo.replace_range(i..i + original.len_utf8(), replacement.encode_utf8(&mut [0; 4]));
                let reason = parse(&p, &typo).unwrap_err().reason();
                prop_assert_eq!(reason, Some(ErrorReason::TokenMalformed), "{} {:?}", i, replacement);
            }
        }
    }
}

//! The token as a secret that never prints, checked for shape before it is ever sent.
use std::fmt;

use auth_api::token::Malformed;

/// A personal access token. `Debug` and `Display` are redacted so that a token can sit
/// in any struct that is logged or printed; only [`Token::expose`] yields the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Parses a token, ignoring surrounding whitespace (a Secret file or a paste usually
    /// ends in a newline).
    ///
    /// The shape is checked here, before anything is sent: a string that is not a token
    /// may be some other secret pasted by mistake, and should not leave the machine. Any
    /// prefix the service may be configured with is accepted (`pat_`, `svc_`, ...): the
    /// checksum covers the prefix, so a typo anywhere is still caught.
    pub fn parse(raw: &str) -> Result<Token, Malformed> {
        let raw = raw.trim();
        auth_api::token::check_any(raw)?;
        Ok(Token(raw.to_owned()))
    }

    /// The secret itself. Call sites are few and obvious: the calls to the server
    /// (auth-client puts it in a sensitive `authorization` header) and the config file
    /// writer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use auth_api::token::{Prefix, generate};

    use super::*;

    #[test]
    fn parses_well_formed_tokens_of_any_prefix_and_trims_newlines() {
        for prefix in ["pat_", "svc_"] {
            let good = generate(&Prefix::new(prefix).unwrap()).unwrap();
            let token = Token::parse(&format!("  {good}\n")).unwrap();
            assert_eq!(token.expose(), good);
        }
    }

    #[test]
    fn rejects_what_is_not_a_token() {
        let good = generate(&Prefix::default()).unwrap();
        assert_eq!(Token::parse(" \n"), Err(Malformed::Empty));
        assert_eq!(Token::parse("hunter2"), Err(Malformed::WrongPrefix(None)));
        assert_eq!(
            Token::parse(&good[..good.len() - 1]),
            Err(Malformed::WrongLength)
        );
        let mut dashed = good.clone();
        dashed.replace_range(10..11, "-");
        assert_eq!(Token::parse(&dashed), Err(Malformed::BadCharacters));
        assert_eq!(
            Token::parse(&good.replace("pat_", "tap_")),
            Err(Malformed::ChecksumMismatch)
        );
    }

    #[test]
    fn debug_and_display_are_redacted() {
        let good = generate(&Prefix::default()).unwrap();
        let token = Token::parse(&good).unwrap();
        for printed in [format!("{token:?}"), format!("{token}")] {
            assert!(!printed.contains(&good), "{printed}");
        }
    }
}

//! Fuzzes the token shape check (`check` with the default prefix, and `check_any`): it
//! must never panic, and what it accepts must be exactly a token `with_random` builds.
#![no_main]

use auth_api::{
    ErrorReason,
    token::{MAX_LEN, Malformed, Prefix, RANDOM_LEN, check, check_any, with_random},
};
use libfuzzer_sys::fuzz_target;

/// An accepted token is `prefix + random + checksum`: rebuilding it from its random part
/// must give the same string, or the check accepted something `generate` never makes.
fn round_trips(prefix: &Prefix, token: &str) {
    let Some(random) = token
        .strip_prefix(prefix.as_str())
        .and_then(|body| body.get(..RANDOM_LEN))
    else {
        panic!("accepted without its prefix or random part: {token:?}");
    };
    assert_eq!(with_random(prefix, random).as_deref(), Ok(token));
}

/// What every refusal must satisfy, whichever check gave it.
fn refusal(presented: &str, why: &Malformed) {
    assert_eq!(*why == Malformed::Empty, presented.is_empty(), "{why:?}");
    assert_eq!(
        *why == Malformed::TooLong,
        presented.len() > MAX_LEN,
        "{why:?}"
    );
    let expected = if presented.is_empty() {
        ErrorReason::MissingCredentials
    } else {
        ErrorReason::TokenMalformed
    };
    assert_eq!(why.reason(), expected);
    assert!(!why.to_string().is_empty());
}

fuzz_target!(|data: &[u8]| {
    // Lossy, so that every input is checked: invalid UTF-8 becomes U+FFFD, which is as
    // hostile a character as any.
    let presented = String::from_utf8_lossy(data);
    let default = Prefix::default();
    match check(&default, &presented) {
        Ok(()) => {
            round_trips(&default, &presented);
            assert_eq!(check_any(&presented), Ok(default.clone()));
        }
        Err(why) => refusal(&presented, &why),
    }
    match check_any(&presented) {
        Ok(found) => {
            round_trips(&found, &presented);
            assert_eq!(check(&found, &presented), Ok(()));
        }
        Err(why) => refusal(&presented, &why),
    }
});

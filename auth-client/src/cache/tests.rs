//! The cache's rules, one test each, without a service.
use super::*;

fn identity(user: &str, expires_at: Option<SystemTime>) -> Identity {
    Identity::new(crate::outcome::IdentityData {
        token_id: "7d3f0c1e-0000-4000-8000-000000000001".into(),
        user_id: user.into(),
        name: "laptop".into(),
        scopes: vec!["read".into()],
        expires_at,
    })
}

/// A cache whose stream has just said it is current (and has flushed nothing yet).
fn current(settings: CacheSettings) -> LocalCache {
    let cache = LocalCache::new(settings);
    cache.heartbeat(true, Duration::ZERO, Some(Duration::from_millis(250)));
    cache
}

/// A request that starts now.
fn settled(cache: &LocalCache) -> Ticket {
    cache.ticket()
}

#[test]
fn nothing_is_served_until_a_current_heartbeat_and_not_after_the_bound() {
    let cache = LocalCache::new(CacheSettings::default());
    assert!(!cache.serving());
    cache.heartbeat(false, Duration::ZERO, None);
    assert!(
        !cache.serving(),
        "a heartbeat that cannot vouch proves nothing"
    );
    cache.heartbeat(true, Duration::from_millis(10), None);
    assert!(cache.serving());
    let fresh = current(CacheSettings::default());
    assert!(fresh.insert(settled(&fresh), [1; 32], Ok(identity("a", None)), 0));
    assert_eq!(fresh.get(&[1; 32]).unwrap().unwrap().user_id, "a");
    // A service whose knowledge is older than the bound proves too little.
    let stale = LocalCache::new(CacheSettings::default());
    stale.heartbeat(true, Duration::from_millis(300), None);
    assert!(!stale.serving());
    assert!(stale.get(&[1; 32]).is_none());
    assert_eq!(stale.state().bypasses, 1);
}

#[test]
fn a_change_before_or_during_the_request_keeps_the_answer_out() {
    let cache = current(CacheSettings::default());
    // Heard just before the request: the replica that answers may not know it yet.
    cache.invalidate(&[[2; 32]]);
    let ticket = cache.ticket();
    assert!(!cache.insert(ticket, [2; 32], Ok(identity("stale", None)), 0));
    assert!(cache.get(&[2; 32]).is_none());
    // Another token is not affected.
    assert!(cache.insert(ticket, [3; 32], Ok(identity("other", None)), 0));
    // Once the window has passed, the token is cached again.
    let later = Ticket(cache.now_us() + 2 * cache.bound_us() + 1);
    assert!(cache.insert(later, [2; 32], Ok(identity("fresh", None)), 0));
    // A change after the request started also keeps its answer out.
    let during = cache.ticket();
    cache.invalidate(&[[4; 32]]);
    assert!(!cache.insert(during, [4; 32], Ok(identity("raced", None)), 0));
}

#[test]
fn a_flush_forgets_everything_and_proves_nothing() {
    let cache = current(CacheSettings::default());
    assert!(cache.insert(settled(&cache), [5; 32], Ok(identity("a", None)), 0));
    cache.flush();
    assert!(!cache.serving());
    cache.heartbeat(true, Duration::ZERO, None);
    assert!(cache.get(&[5; 32]).is_none(), "gone with the flush");
    let ticket = cache.ticket();
    assert!(
        !cache.insert(ticket, [5; 32], Ok(identity("a", None)), 0),
        "the flush is in the window of a request that started just after it"
    );
    let later = Ticket(cache.now_us() + 2 * cache.bound_us() + 1);
    assert!(cache.insert(later, [5; 32], Ok(identity("a", None)), 0));
    assert_eq!(cache.state().flushes, 1);
}

#[test]
fn expiry_is_judged_on_the_service_s_clock() {
    let cache = current(CacheSettings::default());
    let in_a_minute = SystemTime::now() + Duration::from_secs(60);
    let ticket = settled(&cache);
    // The service's clock is two minutes ahead of ours: the token is already expired.
    let ahead = 120_000_000;
    assert!(cache.insert(ticket, [6; 32], Ok(identity("a", Some(in_a_minute))), ahead));
    assert_eq!(cache.get(&[6; 32]).unwrap(), Err(Rejection::TokenExpired));
    assert!(cache.insert(
        ticket,
        [7; 32],
        Ok(identity("a", Some(in_a_minute))),
        -ahead
    ));
    assert!(cache.get(&[7; 32]).unwrap().is_ok());
    assert_eq!(
        offset_us(
            SystemTime::UNIX_EPOCH + Duration::from_secs(2),
            SystemTime::UNIX_EPOCH
        ),
        2_000_000
    );
}

#[test]
fn an_outage_is_bridged_for_live_tokens_and_permanent_refusals_only() {
    let cache = current(CacheSettings::default());
    let ticket = settled(&cache);
    assert!(cache.insert(ticket, [8; 32], Ok(identity("a", None)), 0));
    assert!(cache.insert(ticket, [9; 32], Err(Rejection::TokenRevoked), 0));
    assert!(cache.insert(ticket, [10; 32], Err(Rejection::TokenUnknown), 0));
    cache.lost();
    assert!(cache.get(&[8; 32]).is_none(), "no stream, no cache");
    assert!(cache.grace(&[8; 32]).unwrap().is_ok());
    assert_eq!(cache.grace(&[9; 32]), Some(Err(Rejection::TokenRevoked)));
    assert_eq!(
        cache.grace(&[10; 32]),
        None,
        "it may have been created since"
    );
    assert_eq!(cache.state().grace_answers, 2);
    // Without a grace, an outage is an outage.
    let strict = current(CacheSettings {
        outage_grace: Duration::ZERO,
        ..CacheSettings::default()
    });
    assert!(strict.insert(settled(&strict), [8; 32], Ok(identity("a", None)), 0));
    strict.lost();
    assert!(strict.grace(&[8; 32]).is_none());
    strict.expire_grace();
    assert_eq!(strict.state().entries, 0);
    // A flush voids the grace: what was proven may be wrong.
    cache.flush();
    assert!(cache.grace(&[8; 32]).is_none());
}

#[test]
fn keys_are_sha256() {
    assert_eq!(
        key("abc")[..4],
        [0xba, 0x78, 0x16, 0xbf],
        "FIPS 180-2's first example"
    );
}

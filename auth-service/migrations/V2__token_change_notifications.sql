-- Every change to what a replica may have cached about a token is announced on the
-- `auth_token_changes` channel, so that every replica evicts it at once. The payload is
-- the token's SHA-256 in hex (what the caches are keyed by; never the token), or `*`
-- after a TRUNCATE (evict everything). Notifications are sent at commit, so a change
-- that is rolled back announces nothing.
--
-- Changes by any path count: a replica's RenewCurrentToken or RevokeCurrentToken, the
-- `token revoke` command, a hand-written UPDATE in psql, a DELETE. An INSERT counts too,
-- so that a replica which cached "unknown" for a token's hash learns that it now exists.
-- `last_used_at` is not cached, so its batched stamps announce nothing.
CREATE FUNCTION auth_token_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('auth_token_changes', encode(OLD.token_hash, 'hex'));
    END IF;
    IF TG_OP = 'INSERT'
       OR (TG_OP = 'UPDATE' AND NEW.token_hash IS DISTINCT FROM OLD.token_hash) THEN
        PERFORM pg_notify('auth_token_changes', encode(NEW.token_hash, 'hex'));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tokens_changed
AFTER INSERT OR DELETE OR UPDATE OF user_id, name, token_hash, scopes, created_at, expires_at, revoked_at
ON tokens
FOR EACH ROW EXECUTE FUNCTION auth_token_changed();

CREATE FUNCTION auth_tokens_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('auth_token_changes', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER tokens_truncated
AFTER TRUNCATE ON tokens
FOR EACH STATEMENT EXECUTE FUNCTION auth_tokens_truncated();

-- Personal access tokens. Only a SHA-256 of the secret is stored, never the secret.
CREATE TABLE tokens (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        text NOT NULL CHECK (length(user_id) BETWEEN 1 AND 255),
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    token_hash     bytea NOT NULL CHECK (length(token_hash) = 32),
    display_prefix text NOT NULL,
    scopes         text[] NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- NULL: the token never expires.
    expires_at     timestamptz,
    revoked_at     timestamptz,
    last_used_at   timestamptz
);

CREATE UNIQUE INDEX tokens_token_hash_key ON tokens (token_hash);
CREATE INDEX tokens_user_id_idx ON tokens (user_id, created_at);

-- Audit trail: who created, renewed and revoked each token, when, and from where.
CREATE TABLE token_events (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_id          uuid NOT NULL REFERENCES tokens (id),
    kind              text NOT NULL CHECK (kind IN ('create', 'renew', 'revoke')),
    at                timestamptz NOT NULL DEFAULT now(),
    -- The peer address of a gRPC caller, or `cli:<user>` for the command line.
    caller            text NOT NULL,
    expires_at_before timestamptz,
    expires_at_after  timestamptz
);

CREATE INDEX token_events_token_id_idx ON token_events (token_id, at);

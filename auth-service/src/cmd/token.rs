//! `auth-service token create|list|revoke|prune`, printing for people (`--output text`)
//! or for scripts (`--output json`).
use std::{io::Write, time::Duration};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{
    database::{self, Role, Schema},
    say,
};
use crate::{
    config::{CreateArgs, DbSettings, Expiry, Output, TokenArgs, TokenCommand},
    db::{Db, TokenListing},
    error::{Error, Result, fmt_time},
    token::{self, Prefix},
};

/// Tokens deleted per `token prune` statement: small enough that each batch finishes
/// well inside the statement timeout and holds few row locks.
const PRUNE_BATCH: u32 = 1000;

/// Opens the database, runs one token command, and closes it again.
pub(crate) async fn token(db: &DbSettings, prefix: &Prefix, args: TokenArgs) -> Result<()> {
    let opened = database::open(db, Role::OneShot, Schema::Migrate, Default::default()).await?;
    let output = args.output;
    let result = match args.command {
        TokenCommand::Create(create_args) => create(&opened.db, prefix, create_args, output).await,
        TokenCommand::List { user } => list(&opened.db, user.as_deref(), output).await,
        TokenCommand::Revoke { id } => revoke(&opened.db, id, output).await,
        TokenCommand::Prune { older_than } => prune(&opened.db, older_than, output).await,
    };
    opened.close(Role::OneShot).await?;
    result
}

/// The audit trail's caller for the command line.
fn cli_caller() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// A flag's value that cannot be stored: a usage error (exit 2), like clap's own.
fn check_label(flag: &str, value: &str) -> Result<()> {
    if value.trim().is_empty() || value.len() > 255 || value.chars().any(char::is_control) {
        return Err(Error::Config(format!(
            "{flag} must be 1-255 printable characters"
        )));
    }
    Ok(())
}

/// A scope is an RFC 6749 scope-token without commas: proxies require scopes as a
/// space-separated list and receive the granted ones comma-separated (`X-Auth-Scopes`).
fn check_scope(value: &str) -> Result<()> {
    let allowed = |c: char| c == '!' || ('#'..='~').contains(&c) && c != '\\' && c != ',';
    if value.is_empty() || value.len() > 255 || !value.chars().all(allowed) {
        return Err(Error::InvalidArgument(format!(
            "--scope {value:?}: a scope is 1-255 visible ASCII characters without spaces, \
             commas, quotes or backslashes (e.g. billing:read)"
        )));
    }
    Ok(())
}

/// A time in JSON output: RFC 3339, UTC, whole seconds (as the text output shows it),
/// so that the strings of one listing also sort as times.
fn json_time(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(fmt_time)
}

/// Writes `text` (one or more whole lines) to stdout and flushes it.
fn print(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()
}

/// A JSON document on stdout, as one line.
fn print_json(value: &impl Serialize) -> std::io::Result<()> {
    let json = serde_json::to_string(value).map_err(std::io::Error::other)?;
    print(&format!("{json}\n"))
}

/// What `token create --output json` prints: the one time the secret is shown.
#[derive(Serialize)]
struct CreatedJson<'a> {
    id: String,
    token: &'a str,
    expires_at: Option<String>,
}

async fn create(db: &Db, prefix: &Prefix, args: CreateArgs, output: Output) -> Result<()> {
    check_label("--user", &args.user)?;
    check_label("--name", &args.name)?;
    for s in &args.scopes {
        check_scope(s)?;
    }
    let raw = token::generate(prefix)?;
    let digest = token::digest_of(&raw, prefix);
    let lifetime = match args.expires_in {
        Expiry::In(d) => Some(d),
        Expiry::Never => None,
    };
    let created = db
        .create_token(
            &args.user,
            &args.name,
            &digest,
            &args.scopes,
            lifetime,
            &cli_caller(),
        )
        .await?;
    // The one and only time the secret is shown: alone on stdout (as text, so that
    // `TOKEN=$(auth-service token create ...)` works, or in one JSON object); the rest
    // goes to stderr.
    let printed = match output {
        Output::Text => print(&format!("{}\n", raw.expose())),
        Output::Json => print_json(&CreatedJson {
            id: created.id.to_string(),
            token: raw.expose(),
            expires_at: json_time(created.expires_at),
        }),
    };
    if let Err(e) = printed {
        // Nobody received the secret: a live token nobody holds is only a risk.
        db.revoke_by_id(created.id, &cli_caller()).await?;
        return Err(Error::Runtime(format!(
            "could not print the new token ({e}); it was revoked, nothing usable was created"
        )));
    }
    let expires = created.expires_at.map_or_else(
        || "never expires".into(),
        |t| format!("expires {}", fmt_time(t)),
    );
    say(&format!(
        "created token {} for user {:?} (name {:?}), {expires}. It is shown only once: store it now.",
        created.id, args.user, args.name
    ));
    Ok(())
}

/// A token's state as `token list` shows it, judged on the database clock.
fn status(r: &TokenListing) -> &'static str {
    match (r.revoked_at, r.expires_at) {
        (Some(_), _) => "revoked",
        (None, Some(e)) if e <= r.db_now => "expired",
        _ => "active",
    }
}

/// One token in `token list --output json`: everything the table shows, and never the
/// secret or its hash (the database row's hash is not even read).
#[derive(Serialize)]
struct ListedJson<'a> {
    id: String,
    user_id: &'a str,
    name: &'a str,
    display_prefix: &'a str,
    scopes: &'a [String],
    created_at: String,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    last_used_at: Option<String>,
    status: &'static str,
}

impl<'a> From<&'a TokenListing> for ListedJson<'a> {
    fn from(r: &'a TokenListing) -> Self {
        ListedJson {
            id: r.id.to_string(),
            user_id: &r.user_id,
            name: &r.name,
            display_prefix: &r.display_prefix,
            scopes: &r.scopes,
            created_at: fmt_time(r.created_at),
            expires_at: json_time(r.expires_at),
            revoked_at: json_time(r.revoked_at),
            last_used_at: json_time(r.last_used_at),
            status: status(r),
        }
    }
}

async fn list(db: &Db, user: Option<&str>, output: Output) -> Result<()> {
    let rows = db.list(user).await?;
    // A reader that went away (`| head`) is not an error of ours.
    let _ = match output {
        Output::Json => print_json(&rows.iter().map(ListedJson::from).collect::<Vec<_>>()),
        Output::Text => {
            let mut table = String::from(
                "ID\tUSER\tNAME\tPREFIX\tSCOPES\tCREATED\tEXPIRES\tSTATUS\tLAST USED\n",
            );
            for r in &rows {
                table.push_str(&format!(
                    "{}\t{}\t{}\t{}…\t{}\t{}\t{}\t{}\t{}\n",
                    r.id,
                    r.user_id,
                    r.name,
                    r.display_prefix,
                    r.scopes.join(","),
                    fmt_time(r.created_at),
                    r.expires_at.map_or_else(|| "never".into(), fmt_time),
                    status(r),
                    r.last_used_at.map_or_else(|| "-".into(), fmt_time),
                ));
            }
            print(&table)
        }
    };
    Ok(())
}

/// What `token revoke --output json` prints.
#[derive(Serialize)]
struct RevokedJson {
    id: String,
    revoked_at: String,
}

async fn revoke(db: &Db, id: Uuid, output: Output) -> Result<()> {
    let at = db.revoke_by_id(id, &cli_caller()).await?;
    match output {
        Output::Text => say(&format!("revoked token {id} at {}", fmt_time(at))),
        Output::Json => {
            let _ = print_json(&RevokedJson {
                id: id.to_string(),
                revoked_at: fmt_time(at),
            });
        }
    }
    Ok(())
}

/// What `token prune --output json` prints.
#[derive(Serialize)]
struct PrunedJson {
    pruned: u64,
}

async fn prune(db: &Db, older_than: Duration, output: Output) -> Result<()> {
    let pruned = db.prune(older_than, PRUNE_BATCH).await?;
    tracing::info!(
        pruned,
        older_than = %humantime::format_duration(older_than),
        "pruned tokens"
    );
    let _ = match output {
        Output::Text => print(&format!("pruned {pruned} tokens\n")),
        Output::Json => print_json(&PrunedJson { pruned }),
    };
    Ok(())
}

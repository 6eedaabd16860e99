//! `auth-service token create|list|revoke`.
use std::io::Write;

use uuid::Uuid;

use super::{
    database::{self, Role, Schema},
    say,
};
use crate::{
    config::{CreateArgs, DbSettings, Expiry, TokenCommand},
    db::Db,
    error::{Error, Result, fmt_time},
    token::{self, Prefix},
};

/// Opens the database, runs one token command, and closes it again.
pub async fn token(db: &DbSettings, prefix: &Prefix, cmd: TokenCommand) -> Result<()> {
    let opened = database::open(db, Role::OneShot, Schema::Migrate).await?;
    let result = match cmd {
        TokenCommand::Create(args) => create(&opened.db, prefix, args).await,
        TokenCommand::List { user } => list(&opened.db, user.as_deref()).await,
        TokenCommand::Revoke { id } => revoke(&opened.db, id).await,
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

async fn create(db: &Db, prefix: &Prefix, args: CreateArgs) -> Result<()> {
    check_label("--user", &args.user)?;
    check_label("--name", &args.name)?;
    for s in &args.scopes {
        check_label("--scope", s)?;
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
    // The one and only time the secret is shown: alone on stdout, so
    // `TOKEN=$(auth-service token create ...)` works; the rest goes to stderr.
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{}", raw.expose()).and_then(|()| stdout.flush()) {
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

async fn list(db: &Db, user: Option<&str>) -> Result<()> {
    let rows = db.list(user).await?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "ID\tUSER\tNAME\tPREFIX\tSCOPES\tCREATED\tEXPIRES\tSTATUS\tLAST USED"
    );
    for r in rows {
        let status = match (r.revoked_at, r.expires_at) {
            (Some(_), _) => "revoked",
            (None, Some(e)) if e <= r.db_now => "expired",
            _ => "active",
        };
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}…\t{}\t{}\t{}\t{}\t{}",
            r.id,
            r.user_id,
            r.name,
            r.display_prefix,
            r.scopes.join(","),
            fmt_time(r.created_at),
            r.expires_at.map_or_else(|| "never".into(), fmt_time),
            status,
            r.last_used_at.map_or_else(|| "-".into(), fmt_time),
        );
    }
    Ok(())
}

async fn revoke(db: &Db, id: Uuid) -> Result<()> {
    let at = db.revoke_by_id(id, &cli_caller()).await?;
    say(&format!("revoked token {id} at {}", fmt_time(at)));
    Ok(())
}

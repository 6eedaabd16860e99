//! `auth-service migrate`: apply pending migrations and exit.
use super::{
    database::{self, Role, Schema},
    say,
};
use crate::{config::DbSettings, error::Result};

pub(crate) async fn migrate(db: &DbSettings) -> Result<()> {
    let opened = database::open(db, Role::OneShot, Schema::Migrate, Default::default()).await?;
    say("migrations applied");
    opened.close(Role::OneShot).await
}

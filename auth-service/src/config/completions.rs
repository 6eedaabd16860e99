//! The argument of `auth-service completions`.
use clap::Args;

/// What `completions` prints.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell the script is for.
    #[arg(value_enum)]
    pub(crate) shell: clap_complete::Shell,
}

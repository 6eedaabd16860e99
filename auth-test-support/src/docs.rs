//! `docs/configuration.md`, generated from the clap definitions of both binaries through
//! clap's own introspection (`get_arguments`, `get_env`, `get_default_values`,
//! `get_long_help`), never by parsing `--help` text; and a check that the relative links
//! of the repository's Markdown pages lead somewhere.
//!
//! It lives here because this crate is the one that already depends on both
//! `auth-service` and `auth-agent` (and is a dev-dependency only), so one test owns the
//! whole file: no markers, no second writer. The test fails on drift;
//! `AUTH_REGENERATE=1 cargo test -p auth-test-support --lib configuration` rewrites it.
use clap::{Arg, Command};

/// The page's path, from this crate's directory.
pub const CONFIGURATION_MD: &str = "../docs/configuration.md";

/// The whole page, for both binaries.
pub fn configuration_md() -> String {
    use clap::CommandFactory;
    let mut out = String::from(
        "# Configuration\n\n\
         <!-- Generated from the clap definitions of both binaries by\n     \
         `cargo test -p auth-test-support --lib configuration`, which fails when this file\n     \
         is out of date. Do not edit it by hand: change the flag's doc comment or attribute,\n     \
         then run `AUTH_REGENERATE=1 cargo test -p auth-test-support --lib configuration`. -->\n\n\
         Every flag of `auth-service` and `auth-agent`, command by command: the environment\n\
         variable that sets it, its default, and what it does. A flag on the command line wins\n\
         over its variable. The flags listed under a binary's own name are accepted before or\n\
         after any of its subcommands; those under `auth-service token` by every `token`\n\
         subcommand. Durations are written as `30s`, `12h`, `7d`; lists as `a,b`. How the\n\
         flags fit together is in [operations.md](operations.md) and\n\
         [agent/README.md](../agent/README.md).\n\n",
    );
    let binaries = [
        auth_service::config::Cli::command(),
        auth_agent::cli::Cli::command(),
    ];
    for binary in &binaries {
        let name = binary.get_name();
        out.push_str(&format!("- [{name}](#{})", slug(name)));
        let subcommands: Vec<String> = all_commands(binary, &[])
            .into_iter()
            .skip(1)
            .map(|(path, _)| {
                let title = path.join(" ");
                format!("[{}](#{})", path[1..].join(" "), slug(&title))
            })
            .collect();
        if !subcommands.is_empty() {
            out.push_str(&format!(": {}", subcommands.join(", ")));
        }
        out.push('\n');
    }
    for binary in &binaries {
        out.push('\n');
        out.push_str(&binary_section(binary));
    }
    out
}

/// One binary's part: a `##` heading, then a `###` section per command.
pub fn binary_section(binary: &Command) -> String {
    let mut out = format!("## {}\n", binary.get_name());
    if let Some(about) = binary.get_about() {
        let about = one_paragraph(&about.to_string());
        let stop = if about.ends_with('.') { "" } else { "." };
        out.push_str(&format!("\n{about}{stop}\n"));
    }
    for (path, command) in all_commands(binary, &[]) {
        out.push_str(&format!("\n### {}\n\n", path.join(" ")));
        if path.len() == 1 {
            out.push_str(
                "Accepted before or after any subcommand (and shown by `--help` on each).\n\n",
            );
        } else if let Some(about) = command.get_long_about().or(command.get_about()) {
            out.push_str(&format!("{}\n\n", one_paragraph(&about.to_string())));
        }
        out.push_str(&table(command));
    }
    out
}

/// `binary` and every subcommand under it, depth first, with the words that name each.
fn all_commands<'a>(command: &'a Command, parent: &[String]) -> Vec<(Vec<String>, &'a Command)> {
    let mut path = parent.to_vec();
    path.push(command.get_name().to_owned());
    let mut out = vec![(path.clone(), command)];
    for sub in command.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        out.extend(all_commands(sub, &path));
    }
    out
}

/// The command's own arguments as a Markdown table (its subcommands have their own).
fn table(command: &Command) -> String {
    let args: Vec<&Arg> = command
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    if args.is_empty() {
        return "No flags of its own.\n".to_owned();
    }
    let mut out = String::from(
        "| flag | environment variable | default | description |\n| --- | --- | --- | --- |\n",
    );
    for arg in args {
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default = if arg.is_hide_default_value_set() {
            String::new()
        } else {
            let values: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if values.is_empty() {
                String::new()
            } else {
                format!("`{}`", values.join(","))
            }
        };
        let mut help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| one_paragraph(&h.to_string()))
            .unwrap_or_default();
        let possible: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| format!("`{}`", v.get_name()))
            .collect();
        if !possible.is_empty() && arg.get_action().takes_values() {
            if !help.is_empty() && !help.ends_with('.') {
                help.push('.');
            }
            help.push_str(&format!(" One of {}.", possible.join(", ")));
        }
        out.push_str(&format!(
            "| {} | {env} | {default} | {} |\n",
            flag(arg),
            cell(help.trim())
        ));
    }
    out
}

/// `--name <VALUE>`, `--switch`, or `<ID>` for a positional argument.
fn flag(arg: &Arg) -> String {
    let value = || {
        arg.get_value_names()
            .and_then(|names| names.first())
            .map(|n| n.to_string())
            .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
    };
    match arg.get_long() {
        Some(long) if arg.get_action().takes_values() => format!("`--{long} <{}>`", value()),
        Some(long) => format!("`--{long}`"),
        None => format!("`<{}>`", value()),
    }
}

/// Help text on one line: paragraphs and wrapped lines joined by spaces.
fn one_paragraph(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text that cannot break a table row.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_`
/// dropped, spaces turned into `-`.
pub fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The lines of a Markdown page outside its fenced code blocks.
fn prose(markdown: &str) -> impl Iterator<Item = &str> {
    let mut in_code = false;
    markdown.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            return false;
        }
        !in_code
    })
}

/// The anchors of a Markdown page's headings.
pub fn anchors(markdown: &str) -> Vec<String> {
    prose(markdown)
        .filter(|line| line.starts_with('#'))
        .map(|line| slug(line.trim_start_matches('#').trim()))
        .collect()
}

/// The relative link targets of a Markdown page (`[text](target)`), outside code blocks;
/// links to the web, mail and the page's own anchors are left out.
pub fn relative_links(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(markdown) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            if !target.is_empty()
                && !target.contains("://")
                && !target.starts_with('#')
                && !target.starts_with("mailto:")
                && !target.contains(' ')
            {
                out.push(target.to_owned());
            }
            rest = &rest[end..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// The first line where `a` and `b` differ, for the failure message.
    fn first_difference(a: &str, b: &str) -> String {
        let (mut a_lines, mut b_lines) = (a.lines(), b.lines());
        for number in 1.. {
            match (a_lines.next(), b_lines.next()) {
                (None, None) => break,
                (x, y) if x == y => continue,
                (x, y) => {
                    return format!(
                        "line {number}:\n  committed: {}\n  generated: {}",
                        x.unwrap_or("<end of file>"),
                        y.unwrap_or("<end of file>")
                    );
                }
            }
        }
        "only in line endings".to_owned()
    }

    #[test]
    fn configuration_md_is_generated_from_both_binaries() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CONFIGURATION_MD);
        let generated = configuration_md();
        if std::env::var("AUTH_REGENERATE").as_deref() == Ok("1") {
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/configuration.md is not what the flags say ({}). Regenerate it with\n  \
             AUTH_REGENERATE=1 cargo test -p auth-test-support --lib configuration\nand commit it.",
            first_difference(&committed, &generated)
        );
    }

    #[test]
    fn the_generator_lists_every_flag_with_its_variable_default_and_help() {
        #[derive(clap::Parser)]
        #[command(name = "demo")]
        struct Demo {
            /// Where to look
            /// (wrapped).
            #[arg(long, global = true, env = "DEMO_DIR", default_value = "/x")]
            dir: String,
            #[command(subcommand)]
            command: Sub,
        }
        #[derive(clap::Subcommand)]
        enum Sub {
            /// Run it.
            Run {
                /// How | often.
                #[arg(long, env = "DEMO_EVERY")]
                every: Option<u32>,
                /// Turn it off.
                #[arg(long)]
                off: bool,
                /// Hidden plumbing.
                #[arg(long, hide = true)]
                secret: Option<String>,
                /// The item.
                item: String,
            },
            /// Nothing to say.
            Idle,
        }
        use clap::CommandFactory;
        let text = binary_section(&Demo::command());
        for expected in [
            "## demo\n",
            "### demo\n",
            // clap drops the full stop of a one-sentence doc comment.
            "| `--dir <DIR>` | `DEMO_DIR` | `/x` | Where to look (wrapped) |",
            "### demo run\n\nRun it\n",
            "| `--every <EVERY>` | `DEMO_EVERY` |  | How \\| often |",
            "| `--off` |  |  | Turn it off |",
            "| `<ITEM>` |  |  | The item |",
            "### demo idle\n\nNothing to say\n\nNo flags of its own.\n",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("| `--help`"), "{text}");
    }

    #[test]
    fn slugs_follow_github() {
        assert_eq!(
            slug("auth-service token create"),
            "auth-service-token-create"
        );
        assert_eq!(
            slug("Expiry notifications (`--notify-webhook`)"),
            "expiry-notifications---notify-webhook"
        );
    }

    /// Every relative link of the Markdown pages (README, docs/, agent/, deploy/) leads to
    /// a file that exists, and an anchor into a Markdown page to one of its headings.
    #[test]
    fn the_pages_links_lead_somewhere() {
        let root = repo();
        let mut pages = vec![
            root.join("README.md"),
            root.join("agent/README.md"),
            root.join("deploy/README.md"),
        ];
        for entry in std::fs::read_dir(root.join("docs")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                pages.push(path);
            }
        }
        let mut broken = Vec::new();
        for page in &pages {
            let text = std::fs::read_to_string(page).unwrap();
            for link in relative_links(&text) {
                let (file, anchor) = match link.split_once('#') {
                    Some((file, anchor)) => (file, Some(anchor)),
                    None => (link.as_str(), None),
                };
                let target = page.parent().unwrap().join(file);
                let shown = format!("{} -> {link}", page.strip_prefix(&root).unwrap().display());
                if !target.exists() {
                    broken.push(format!("{shown}: no such file"));
                    continue;
                }
                if let Some(anchor) = anchor
                    && target.extension().is_some_and(|e| e == "md")
                    && !anchors(&std::fs::read_to_string(&target).unwrap())
                        .iter()
                        .any(|a| a == anchor)
                {
                    broken.push(format!("{shown}: no such heading"));
                }
            }
        }
        assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    }
}

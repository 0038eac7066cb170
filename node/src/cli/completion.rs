//! `shoal completion bash|zsh|fish` and `shoal man`: shell completions and manual pages
//! generated from the clap definitions (`clap_complete`, `clap_mangen`), so they always
//! match the command line they describe. Neither talks to a daemon.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, ValueEnum};

use super::Cli;

/// A shell `shoal completion` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash (bash-completion: /usr/share/bash-completion/completions/shoal).
    Bash,
    /// zsh (a `_shoal` file in a directory of $fpath).
    Zsh,
    /// fish (~/.config/fish/completions/shoal.fish).
    Fish,
}

/// Writes the completion script for `shell` to `out`.
pub(super) fn completion(shell: Shell, out: &mut dyn Write) -> Result<()> {
    let mut cmd = Cli::command();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut cmd, "shoal", out);
    out.flush().context("cannot write the completion script")
}

/// Writes `shoal(1)` to `out`.
pub(super) fn man_page(out: &mut dyn Write) -> Result<()> {
    clap_mangen::Man::new(Cli::command())
        .render(out)
        .context("cannot write the manual page")
}

/// Writes one page per command (`shoal.1`, `shoal-service.1`, `shoal-service-create.1`, …)
/// into `dir` and returns their paths, parents first.
pub(super) fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    fn generate(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
        let man = clap_mangen::Man::new(cmd.clone());
        let path = dir.join(man.get_filename());
        let mut page = Vec::new();
        man.render(&mut page)?;
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            generate(sub.clone(), dir, written)?;
        }
        Ok(())
    }
    // As clap_mangen's own `generate_to`: no `help` pseudo-command, and every subcommand
    // built with its full display name (`shoal-service-create`).
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    generate(cmd, dir, &mut written)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(shell: Shell) -> String {
        let mut out = Vec::new();
        completion(shell, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completions_know_the_commands_and_their_flags() {
        let bash = script(Shell::Bash);
        assert!(bash.contains("complete -F _shoal"), "{bash}");
        assert!(bash.contains("join-token"), "{bash}");
        assert!(bash.contains("--update-order"), "{bash}");
        let zsh = script(Shell::Zsh);
        assert!(zsh.starts_with("#compdef shoal"), "{zsh}");
        assert!(zsh.contains("--socket-group"), "{zsh}");
        let fish = script(Shell::Fish);
        assert!(fish.contains("complete -c shoal"), "{fish}");
        assert!(fish.contains("-l ttl"), "{fish}");
        // The values of a ValueEnum are offered: bash completes `shoal completion <TAB>`
        // with the shells.
        assert!(bash.contains("bash zsh fish"), "{bash}");
    }

    #[test]
    fn man_page_describes_shoal_and_its_commands() {
        let mut out = Vec::new();
        man_page(&mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(page.starts_with(".ie \\n(.g .ds Aq"), "{page}");
        assert!(page.contains(".TH shoal 1"), "{page}");
        assert!(page.contains("join\\-token"), "{page}");
        assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
    }

    #[test]
    fn man_pages_one_per_command() {
        let dir = tempfile::tempdir().unwrap();
        let written = man_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names[0], "shoal.1");
        for page in [
            "shoal-service-create.1",
            "shoal-node-ls.1",
            "shoal-join-token.1",
        ] {
            assert!(names.iter().any(|n| n == page), "{page} missing: {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let create = std::fs::read_to_string(dir.path().join("shoal-service-create.1")).unwrap();
        assert!(create.contains("\\-\\-replicas"), "{create}");
        // Generated twice, the same bytes (install.sh compares before it writes).
        let again = tempfile::tempdir().unwrap();
        man_pages(again.path()).unwrap();
        for name in &names {
            assert_eq!(
                std::fs::read(dir.path().join(name)).unwrap(),
                std::fs::read(again.path().join(name)).unwrap(),
                "{name}"
            );
        }
    }
}

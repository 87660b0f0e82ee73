//! What every ovl binary prints about itself for packages and shells: completion scripts
//! (`ovl completion bash`) and its man page (`ovl man`, `ovl-controller man`, `ovl-agent
//! man`), both generated from the same clap definitions as `--help`, so they never disagree
//! with it. `scripts/build-debs.sh` installs them.

use std::io::Write;

use clap_complete::Shell;

/// Writes `cmd`'s completion script for `shell`.
pub fn completion(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Writes `cmd`'s man page (roff, section `section`; `man -l -` shows it).
pub fn man(cmd: clap::Command, section: &str, out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(cmd).section(section).render(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> clap::Command {
        clap::Command::new("demo")
            .about("A demo command")
            .subcommand(clap::Command::new("list").about("List things"))
    }

    #[test]
    fn completions_and_man_pages_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completion(cmd(), shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("list"), "{shell}: {text}");
        }
        let mut out = Vec::new();
        man(cmd(), "8", &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(".TH demo 8"), "{text}");
        assert!(text.contains("A demo command"), "{text}");
    }
}

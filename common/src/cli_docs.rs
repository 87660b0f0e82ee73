//! What every ovl binary prints about itself for packages and shells: completion scripts
//! (`ovl completion bash`) and its man page (`ovl man`, `ovl-controller man`, `ovl-agent
//! man`), both generated from the same clap definitions as `--help`, so they never disagree
//! with it. `scripts/build-debs.sh` installs them. [`help_gaps`] is the rule every binary's
//! `--help` is held to (each one's tests apply it).

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

/// What `cmd`'s help leaves unsaid, one line each, for every subcommand (hidden ones and
/// clap's own `help`/`version` aside): a subcommand without a description, an option or
/// argument without one, and a value shown only by a field's several-word name
/// (`--state-dir <STATE_DIR>`) rather than by what to write there (`--state-dir <DIR>`; a
/// one-word name such as `--host <HOST>` usually says it already). Empty when the help
/// teaches everything.
pub fn help_gaps(cmd: &clap::Command) -> Vec<String> {
    // Built, every argument has its number of values settled.
    let mut cmd = cmd.clone();
    cmd.build();
    let mut gaps = Vec::new();
    collect_gaps(&cmd, cmd.get_name(), &mut gaps);
    gaps
}

/// Panics listing [`help_gaps`] if there are any: each binary's test of its `--help`.
pub fn assert_no_help_gaps(cmd: &clap::Command) {
    let gaps = help_gaps(cmd);
    assert!(gaps.is_empty(), "--help gaps:\n{}", gaps.join("\n"));
}

fn collect_gaps(cmd: &clap::Command, path: &str, gaps: &mut Vec<String>) {
    if cmd.get_about().is_none() {
        gaps.push(format!("{path}: no description"));
    }
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if arg.is_hide_set() || matches!(id, "help" | "version") {
            continue;
        }
        if arg.get_help().is_none() {
            gaps.push(format!("{path} {id}: no help text"));
        }
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        let named_for_field = id.contains('_')
            && arg
                .get_value_names()
                .is_none_or(|names| names.iter().any(|n| *n == id.to_uppercase().as_str()));
        // A positional's name is what it holds; an enum's possible values speak for it.
        let is_positional = arg.get_long().is_none() && arg.get_short().is_none();
        let has_values = !arg.get_possible_values().is_empty();
        if takes_value && named_for_field && !is_positional && !has_values {
            gaps.push(format!(
                "{path} --{id}: its value is named after the field; give a value_name that says what to write"
            ));
        }
    }
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        collect_gaps(sub, &format!("{path} {}", sub.get_name()), gaps);
    }
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

    #[test]
    fn help_gaps_names_what_help_leaves_unsaid() {
        use clap::Arg;
        let cmd = clap::Command::new("demo")
            .about("A demo")
            .arg(Arg::new("state_dir").long("state-dir").help("The state"))
            .arg(Arg::new("host").long("host").help("The host"))
            .arg(
                Arg::new("pki")
                    .long("pki")
                    .value_name("DIR")
                    .help("The PKI"),
            )
            .arg(
                Arg::new("quiet")
                    .long("quiet")
                    .action(clap::ArgAction::SetTrue),
            )
            .subcommand(clap::Command::new("run"));
        assert_eq!(
            help_gaps(&cmd),
            [
                "demo --state_dir: its value is named after the field; give a value_name that says what to write",
                "demo quiet: no help text",
                "demo run: no description",
            ]
        );
        let mut good = cmd.clone();
        good = good
            .mut_arg("state_dir", |a| a.value_name("DIR"))
            .mut_arg("quiet", |a| a.help("Say less"))
            .mut_subcommand("run", |c| c.about("Run it"));
        assert!(help_gaps(&good).is_empty(), "{:?}", help_gaps(&good));
    }
}

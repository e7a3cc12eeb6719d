//! Every setting a command takes (an option with an environment variable, as `--help` shows it)
//! is in `docs/configuration.md` and `.env.example`, with the default the command prints.
//! Both are read from clap's own description of the command line, the one source of truth.

use clap::CommandFactory;
use vehicle_state::cli::Cli;

use crate::markdown::{read, root};

/// A setting: its variable, its default as `--help` prints it (none: unset), and the commands
/// that take it.
#[derive(Debug)]
struct Setting {
    variable: String,
    default: Option<String>,
    commands: Vec<String>,
}

fn settings() -> Vec<Setting> {
    fn visit(command: &clap::Command, path: &str, found: &mut Vec<Setting>) {
        for arg in command.get_arguments() {
            let Some(variable) = arg.get_env() else {
                continue;
            };
            let variable = variable.to_string_lossy().into_owned();
            let default = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .reduce(|all, v| format!("{all},{v}"));
            match found.iter_mut().find(|s| s.variable == variable) {
                Some(setting) => {
                    assert_eq!(
                        setting.default, default,
                        "{variable}: one default for every command"
                    );
                    setting.commands.push(path.to_owned());
                }
                None => found.push(Setting {
                    variable,
                    default,
                    commands: vec![path.to_owned()],
                }),
            }
        }
        for sub in command.get_subcommands() {
            visit(sub, &format!("{path} {}", sub.get_name()), found);
        }
    }
    let mut found = Vec::new();
    visit(&Cli::command(), "vehicle-state", &mut found);
    found
}

#[test]
fn every_setting_is_documented_with_the_default_it_has() {
    let page = read(&root().join("docs/configuration.md"));
    let rows: Vec<&str> = page.lines().filter(|l| l.starts_with('|')).collect();
    let all = settings();
    let mut missing = Vec::new();

    for setting in &all {
        let name = format!("`{}`", setting.variable);
        let Some(row) = rows.iter().find(|row| {
            row.split('|')
                .nth(1)
                .is_some_and(|cell| cell.trim() == name)
        }) else {
            missing.push(format!(
                "{}: no row (taken by {})",
                setting.variable,
                setting.commands.join(", ")
            ));
            continue;
        };
        let documented = row.split('|').nth(2).map(str::trim).unwrap_or("");
        let expected = match setting.default.as_deref() {
            Some(default) if !default.is_empty() => format!("`{default}`"),
            _ => "unset".to_owned(),
        };
        if documented != expected {
            missing.push(format!(
                "{}: the default is {expected}, the page says {documented}",
                setting.variable
            ));
        }
    }

    assert!(
        missing.is_empty(),
        "docs/configuration.md differs from the commands' settings:\n{}",
        missing.join("\n")
    );
    assert!(all.len() > 50, "only {} settings found", all.len());
}

#[test]
fn every_setting_is_in_the_example_environment_file_with_its_default() {
    let file = read(&root().join(".env.example"));
    let lines: Vec<&str> = file
        .lines()
        .map(|l| l.trim_start_matches('#').trim_start())
        .collect();
    let mut missing = Vec::new();

    for setting in settings() {
        let prefix = format!("{}=", setting.variable);
        let Some(line) = lines.iter().find(|l| l.starts_with(&prefix)) else {
            missing.push(format!("{}: absent", setting.variable));
            continue;
        };
        if let Some(default) = setting.default.as_deref().filter(|d| !d.is_empty())
            && line[prefix.len()..] != *default
        {
            missing.push(format!(
                "{}: the default is {default}, the file says {line}",
                setting.variable
            ));
        }
    }

    assert!(
        missing.is_empty(),
        ".env.example differs from the commands' settings:\n{}",
        missing.join("\n")
    );
}

//! The manual's examples, run: each page's `console` blocks against a server of its own,
//! started as the quick start says (`serve --seed sample`) on a fresh database and cache
//! namespace, in the order the page shows them. A `$ ` line is a shell command (continued while
//! a line ends in `\` or a quote is open); the lines after it are what it prints.
//!
//! What may vary between runs is normalised on both sides: the `date` and `x-request-id` header
//! values and the number in `max-age=N`. In an expected line `…` stands for any text, and a line
//! `...` for any lines; a `curl -i` header block compares in any order, names in any case.
//! A pipeline is judged by its output and its last command's status (`curl … | head -1` closes
//! curl's pipe early, which is no failure of the example).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;

use regex::Regex;

use crate::markdown::{Block, blocks, pages, read, root};

/// The address the manual's examples are written for.
const DOCUMENTED: &str = "http://localhost:8080";

/// One command of a `console` block and what it prints.
#[derive(Debug)]
struct Example {
    command: String,
    expected: Vec<String>,
    /// Where it is, for messages: `docs/api.md:120`.
    at: String,
}

fn examples(page: &Path, block: &Block) -> Vec<Example> {
    let name = page
        .strip_prefix(root())
        .unwrap_or(page)
        .display()
        .to_string();
    let mut examples: Vec<Example> = Vec::new();
    let mut continuing = false;
    for (offset, line) in block.lines.iter().enumerate() {
        if continuing {
            let example = examples.last_mut().expect("a command being continued");
            example.command.push('\n');
            example.command.push_str(line);
            continuing = is_unfinished(&example.command);
        } else if let Some(command) = line.strip_prefix("$ ") {
            examples.push(Example {
                command: command.to_owned(),
                expected: Vec::new(),
                at: format!("{name}:{}", block.line + 1 + offset),
            });
            continuing = is_unfinished(command);
        } else {
            match examples.last_mut() {
                Some(example) => example.expected.push(line.to_owned()),
                None => panic!("{name}:{}: a console block starts with `$ `", block.line),
            }
        }
    }
    examples
}

/// A command goes on to the next line after a trailing `\` or inside an open `'` quote.
fn is_unfinished(command: &str) -> bool {
    command.ends_with('\\') || command.matches('\'').count() % 2 == 1
}

static VARYING: LazyLock<[(Regex, &'static str); 3]> = LazyLock::new(|| {
    [
        (
            Regex::new(r"(?i)^(date|x-request-id): .*$").expect("a pattern"),
            "$1: …",
        ),
        (Regex::new(r"max-age=\d+").expect("a pattern"), "max-age=N"),
        (Regex::new(r"(?i)^(age): \d+$").expect("a pattern"), "$1: N"),
    ]
});

/// What may vary, replaced by what it stands for; a header's name in lower case.
fn normalise(line: &str) -> String {
    let mut line = line.trim_end_matches('\r').to_owned();
    for (pattern, with) in VARYING.iter() {
        line = pattern.replace_all(&line, *with).into_owned();
    }
    line
}

/// `expected` with `…` standing for any text.
fn line_matches(expected: &str, actual: &str) -> bool {
    if !expected.contains('…') {
        return expected == actual;
    }
    let pattern: Vec<String> = expected.split('…').map(regex::escape).collect();
    Regex::new(&format!("^{}$", pattern.join(".*"))).is_ok_and(|pattern| pattern.is_match(actual))
}

/// `expected` lines against `actual` lines, a `...` line standing for any lines.
fn lines_match(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first == "..." => {
            (0..=actual.len()).any(|skip| lines_match(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual
            .split_first()
            .is_some_and(|(line, others)| line_matches(first, line) && lines_match(rest, others)),
    }
}

/// A header block (from `HTTP/` to the blank line) in any order and names in any case, the
/// status line first; then the body, line by line.
fn output_matches(expected: &[String], actual: &[String]) -> bool {
    let is_response = |lines: &[String]| lines.first().is_some_and(|l| l.starts_with("HTTP/"));
    if !is_response(expected) || !is_response(actual) {
        return lines_match(expected, actual);
    }
    let split = |lines: &[String]| {
        let end = lines
            .iter()
            .position(String::is_empty)
            .unwrap_or(lines.len());
        (lines[..end].to_vec(), lines[end..].to_vec())
    };
    let (expected_head, expected_body) = split(expected);
    let (actual_head, actual_body) = split(actual);
    if !line_matches(&expected_head[0], &actual_head[0]) {
        return false;
    }
    let lower = |line: &String| match line.split_once(':') {
        Some((name, value)) => format!("{}:{value}", name.to_lowercase()),
        None => line.clone(),
    };
    let mut unmatched: Vec<String> = actual_head[1..].iter().map(lower).collect();
    let mut others_allowed = false;
    for line in &expected_head[1..] {
        if line == "..." {
            others_allowed = true;
            continue;
        }
        let line = lower(line);
        match unmatched
            .iter()
            .position(|actual| line_matches(&line, actual))
        {
            Some(at) => {
                unmatched.remove(at);
            }
            None => return false,
        }
    }
    (others_allowed || unmatched.is_empty()) && lines_match(&expected_body, &actual_body)
}

/// A server as the quick start runs it, on a database and a cache namespace of its own.
struct Server {
    child: Child,
    base: String,
    database: String,
}

impl Server {
    fn start(page: &str) -> Self {
        let suffix = format!(
            "{}_{}",
            std::process::id(),
            page.replace(['/', '.', '-'], "_")
        );
        let database = format!("vs_docs_{suffix}").to_lowercase();
        let mut url = admin_url();
        url.set_path(&format!("/{database}"));
        drop_database(&database);
        let mut child = Command::new(env!("CARGO_BIN_EXE_vehicle-state"))
            .args(["serve", "--seed", "sample"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("DATABASE_URL", url.as_str())
            .env("REDIS_URL", redis_url())
            .env("CACHE_KEY_PREFIX", format!("vs-docs-{suffix}"))
            .env("LOG_FORMAT", "json")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().expect("its stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut base = None;
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["message"] == "listening" {
                base = event["address"].as_str().map(|a| format!("http://{a}"));
                break;
            }
        }
        // Its log is read to the end, so that it never writes into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let Some(base) = base else {
            let _ = child.kill();
            panic!("the server for {page} exited before listening");
        };
        Self {
            child,
            base,
            database,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM would drain for SHUTDOWN_DRAIN_SECS; nothing here needs a clean stop.
        if let Err(error) = self.child.kill() {
            eprintln!("cannot stop the server: {error}");
        }
        if let Err(error) = self.child.wait() {
            eprintln!("the server did not exit: {error}");
        }
        drop_database(&self.database);
    }
}

fn admin_url() -> url::Url {
    let raw = ["TEST_DATABASE_URL", "DATABASE_URL"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut url = url::Url::parse(&raw).expect("a PostgreSQL URL");
    url.set_path("/postgres");
    url
}

fn redis_url() -> String {
    ["TEST_REDIS_URL", "REDIS_URL"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())
}

fn drop_database(name: &str) {
    let status = Command::new("psql")
        .env("PGOPTIONS", "--client-min-messages=warning")
        .arg(admin_url().as_str())
        .args([
            "-qc",
            &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        ])
        .stdout(Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("cannot drop the database {name}");
    }
}

/// Runs one page's examples; returns how many ran, and a message for each that differed.
fn run_page(page: &Path) -> (usize, Vec<String>) {
    let text = read(page);
    let runnable: Vec<Example> = blocks(&text)
        .iter()
        .filter(|block| block.info == "console")
        .flat_map(|block| examples(page, block))
        .collect();
    if runnable.is_empty() {
        return (0, Vec::new());
    }
    let name = page
        .strip_prefix(root())
        .unwrap_or(page)
        .display()
        .to_string();
    let server = Server::start(&name);
    let mut failures = Vec::new();
    for example in &runnable {
        let command = example.command.replace(DOCUMENTED, &server.base);
        let output = Command::new("bash")
            .args(["-c", &command])
            .stdin(Stdio::null())
            .output()
            .expect("bash runs");
        let actual: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(normalise)
            .collect();
        let expected: Vec<String> = example.expected.iter().map(|l| normalise(l)).collect();
        if !output.status.success() || !output_matches(&expected, &actual) {
            failures.push(format!(
                "{}: $ {}\n--- expected\n{}\n--- printed ({})\n{}{}",
                example.at,
                example.command,
                expected.join("\n"),
                output.status,
                actual.join("\n"),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    (runnable.len(), failures)
}

#[test]
fn every_example_prints_what_the_manual_shows() {
    let mut ran = Vec::new();
    let mut failures = Vec::new();
    for page in pages() {
        let (count, failed) = run_page(&page);
        if count > 0 {
            ran.push(format!(
                "{}: {count}",
                page.strip_prefix(root()).unwrap_or(&page).display()
            ));
        }
        failures.extend(failed);
    }
    println!("examples run: {}", ran.join(", "));

    assert!(
        failures.is_empty(),
        "{} example(s) differ from the manual:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    let readme_and_api = ran
        .iter()
        .filter(|r| r.starts_with("README.md") || r.starts_with("docs/api.md"))
        .count();
    assert_eq!(
        readme_and_api, 2,
        "the README and docs/api.md have examples: {ran:?}"
    );
}

#[test]
fn outputs_match_as_the_module_says() {
    let lines = |text: &str| text.lines().map(normalise).collect::<Vec<_>>();
    // Headers in any order and case, varying values normalised, `…` and `...`.
    assert!(output_matches(
        &lines(
            "HTTP/1.1 200 OK\ncontent-type: application/json\nx-cache: MISS\ncache-control: public, max-age=59\n\n{\"a\":…}"
        ),
        &lines(
            "HTTP/1.1 200 OK\r\nCache-Control: public, max-age=58\r\nx-cache: MISS\r\ncontent-type: application/json\r\n\r\n{\"a\":1}"
        ),
    ));
    assert!(!output_matches(
        &lines("HTTP/1.1 200 OK\nx-cache: HIT\n\n{}"),
        &lines("HTTP/1.1 200 OK\nx-cache: MISS\n\n{}"),
    ));
    assert!(!output_matches(
        &lines("HTTP/1.1 200 OK\nx-cache: HIT\n\n{}"),
        &lines("HTTP/1.1 200 OK\nx-cache: HIT\netag: \"x\"\n\n{}"),
    ));
    assert!(output_matches(
        &lines("HTTP/1.1 200 OK\nx-cache: HIT\n...\n\n{}"),
        &lines("HTTP/1.1 200 OK\nx-cache: HIT\netag: \"x\"\n\n{}"),
    ));
    assert!(output_matches(&lines("a\n...\nz"), &lines("a\nb\nc\nz")));
    assert!(!output_matches(&lines("a\nz"), &lines("a\nb\nz")));
    assert!(output_matches(
        &lines("date: x"),
        &lines("date: Fri, 04 Dec 2026 18:00:00 GMT")
    ));
}

#[test]
fn commands_continue_over_lines() {
    let block = Block {
        info: "console".to_owned(),
        lines: [
            "$ curl -d '{",
            "  \"a\": 1}' x \\",
            "  -s",
            "{}",
            "$ curl y",
            "out",
        ]
        .map(str::to_owned)
        .to_vec(),
        line: 1,
    };
    let found = examples(Path::new("README.md"), &block);
    let found: Vec<_> = found
        .iter()
        .map(|e| (e.command.as_str(), e.expected.clone()))
        .collect();
    assert_eq!(
        found,
        [
            ("curl -d '{\n  \"a\": 1}' x \\\n  -s", vec!["{}".to_owned()]),
            ("curl y", vec!["out".to_owned()])
        ]
    );
}

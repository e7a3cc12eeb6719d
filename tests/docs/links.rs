//! Every relative link of the manual resolves: to a file or folder of the repository, and to a
//! heading of the page it names.

use std::path::Path;

use crate::markdown::{anchors, pages, prose, read, root};

/// The targets of the inline links (`[text](target)`) and images of a line.
fn targets(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in line.match_indices("](") {
        let rest = &line[at + 2..];
        let mut depth = 0;
        let end = rest.char_indices().find(|&(_, c)| match c {
            '(' => {
                depth += 1;
                false
            }
            ')' if depth == 0 => true,
            ')' => {
                depth -= 1;
                false
            }
            _ => false,
        });
        if let Some((end, _)) = end {
            // `[text](target "title")`: the title is not part of the target.
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            found.push(target.trim_matches(|c| c == '<' || c == '>').to_owned());
        }
    }
    found
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

#[test]
fn every_relative_link_resolves() {
    let root = root();
    let mut broken = Vec::new();
    let mut checked = 0;

    for page in pages() {
        let text = read(&page);
        let here = page.parent().expect("a folder");
        for (number, line) in prose(&text) {
            for target in targets(&line) {
                if target.is_empty() || is_external(&target) {
                    continue;
                }
                checked += 1;
                let (file, anchor) = match target.split_once('#') {
                    Some((file, anchor)) => (file, Some(anchor)),
                    None => (target.as_str(), None),
                };
                let path = if file.is_empty() {
                    page.clone()
                } else {
                    here.join(file)
                };
                let name = format!(
                    "{}:{number}: {target}",
                    page.strip_prefix(&root).unwrap_or(&page).display()
                );
                if !path.exists() || !within(&root, &path) {
                    broken.push(format!("{name}: no such file"));
                    continue;
                }
                if let Some(anchor) = anchor {
                    let is_markdown = path.extension().is_some_and(|e| e == "md");
                    if is_markdown && !anchors(&read(&path)).iter().any(|a| a == anchor) {
                        broken.push(format!("{name}: no such heading"));
                    }
                }
            }
        }
    }

    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked > 20,
        "only {checked} relative links were found: is the parser right?"
    );
}

/// `docs/../src` is inside the repository although its text does not start with it.
fn within(root: &Path, path: &Path) -> bool {
    path.canonicalize()
        .ok()
        .zip(root.canonicalize().ok())
        .is_some_and(|(path, root)| path.starts_with(root))
}

#[test]
fn links_are_found_in_prose() {
    assert_eq!(
        targets(
            "see [Ingest](docs/ingest.md#settings), ![a](docs/a.png \"t\") and [x](https://e.org)"
        ),
        ["docs/ingest.md#settings", "docs/a.png", "https://e.org"]
    );
}

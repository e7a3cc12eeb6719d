//! The Markdown files of the manual, and the fenced blocks in them.

use std::path::{Path, PathBuf};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The manual: the README, the pages under `docs/`, and the project's other top-level pages.
pub fn pages() -> Vec<PathBuf> {
    let root = root();
    let mut pages: Vec<PathBuf> = ["README.md", "CONTRIBUTING.md", "CHANGELOG.md"]
        .iter()
        .map(|name| root.join(name))
        .filter(|path| path.exists())
        .collect();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("an entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fenced block: its info string, its lines, and the line it starts on (1-based).
pub struct Block {
    pub info: String,
    pub lines: Vec<String>,
    pub line: usize,
}

/// Every fenced block (```` ``` ```` or `~~~`) of a page, in order.
pub fn blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, Block)> = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut open {
            None => {
                let fence: String = trimmed
                    .chars()
                    .take_while(|c| *c == '`' || *c == '~')
                    .collect();
                if fence.len() >= 3
                    && fence
                        .chars()
                        .all(|c| c == fence.chars().next().unwrap_or('`'))
                {
                    let info = trimmed[fence.len()..].trim().to_owned();
                    open = Some((
                        fence,
                        Block {
                            info,
                            lines: Vec::new(),
                            line: number + 1,
                        },
                    ));
                }
            }
            Some((fence, block)) => {
                if trimmed.starts_with(fence.as_str())
                    && trimmed.trim_start_matches(fence.as_str()).trim().is_empty()
                {
                    let (_, block) = open.take().expect("an open block");
                    blocks.push(block);
                } else {
                    block.lines.push(line.to_owned());
                }
            }
        }
    }
    blocks
}

/// The text outside fenced blocks and inline code, where links live.
pub fn prose(text: &str) -> Vec<(usize, String)> {
    outside_fences(text)
        .into_iter()
        .map(|(number, line)| (number, strip_code_spans(&line)))
        .collect()
}

/// The lines outside fenced blocks, numbered from 1.
fn outside_fences(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut fence: Option<String> = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker: String = trimmed
            .chars()
            .take_while(|c| *c == '`' || *c == '~')
            .collect();
        match &fence {
            None if marker.len() >= 3 => fence = Some(marker),
            None => lines.push((number + 1, line.to_owned())),
            Some(open)
                if trimmed.starts_with(open.as_str())
                    && trimmed.trim_start_matches(open.as_str()).trim().is_empty() =>
            {
                fence = None
            }
            Some(_) => {}
        }
    }
    lines
}

/// A line without its `code spans`, whose brackets are not links.
fn strip_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped but for `-` and `_`,
/// spaces as `-`.
pub fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Every anchor of a page: its headings' slugs (a repeated one gets `-1`, `-2`…) and explicit
/// `<a id="…">` / `<a name="…">`.
pub fn anchors(text: &str) -> Vec<String> {
    let mut anchors: Vec<String> = Vec::new();
    for (_, line) in outside_fences(text) {
        if let Some(heading) = line.strip_prefix('#') {
            let heading = heading.trim_start_matches('#');
            if heading.starts_with(' ') {
                let base = slug(heading);
                let mut anchor = base.clone();
                let mut n = 0;
                while anchors.contains(&anchor) {
                    n += 1;
                    anchor = format!("{base}-{n}");
                }
                anchors.push(anchor);
            }
        }
        for marker in ["<a id=\"", "<a name=\""] {
            for (at, _) in line.match_indices(marker) {
                let rest = &line[at + marker.len()..];
                if let Some(end) = rest.find('"') {
                    anchors.push(rest[..end].to_owned());
                }
            }
        }
    }
    anchors
}

#[cfg(test)]
mod tests {
    use super::{anchors, blocks, slug};

    #[test]
    fn headings_become_github_anchors() {
        for (heading, anchor) in [
            ("Quick start", "quick-start"),
            (
                "`GET /vehicles/{id}/history`: the timeline",
                "get-vehiclesidhistory-the-timeline",
            ),
            (
                "In a browser: CORS, compression, a typed client",
                "in-a-browser-cors-compression-a-typed-client",
            ),
            ("TLS", "tls"),
        ] {
            assert_eq!(slug(heading), anchor);
        }
        assert_eq!(
            anchors("# A\n## A\n```\n# not a heading\n```\n"),
            ["a", "a-1"]
        );
    }

    #[test]
    fn blocks_keep_their_info_string_and_lines() {
        let found = blocks("text\n```console\n$ curl x\nout\n```\n~~~sh\nls\n~~~\n");
        let found: Vec<_> = found
            .iter()
            .map(|b| (b.info.as_str(), b.lines.clone(), b.line))
            .collect();
        assert_eq!(
            found,
            [
                ("console", vec!["$ curl x".to_owned(), "out".to_owned()], 2),
                ("sh", vec!["ls".to_owned()], 6)
            ]
        );
    }
}

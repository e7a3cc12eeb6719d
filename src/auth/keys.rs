//! API keys: a file of names and SHA-256 digests, read at start and again when it changes.
//!
//! Only digests are kept (the file holds no key), and a presented key is hashed and compared with
//! every digest in constant time, so neither the file nor the time a refusal takes tells anything
//! about a key.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One key of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: Arc<str>,
    digest: [u8; 32],
}

/// The keys in force.
pub struct ApiKeys {
    path: PathBuf,
    entries: RwLock<Arc<Vec<Entry>>>,
    /// The file's modification time and size when last read, to notice a change.
    seen: RwLock<Option<(SystemTime, u64)>>,
}

impl ApiKeys {
    /// Reads `path`; a file that cannot be read or parsed stops the start, naming the line.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let keys = Self {
            path: path.to_owned(),
            entries: RwLock::new(Arc::new(Vec::new())),
            seen: RwLock::new(None),
        };
        keys.read(stamp(path))?;
        Ok(keys)
    }

    /// How many keys are in force.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The name of the key `presented`, if it is one of the file's.
    pub fn name_of(&self, presented: &[u8]) -> Option<Arc<str>> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let entries = self.current();
        // Every digest is compared, whichever matches: no early exit to time.
        let mut found = None;
        for entry in entries.iter() {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry.name.clone());
            }
        }
        found
    }

    /// Reads the file again if it changed since it was last read (or `force`); keeps the keys
    /// in force, and says why, when it cannot be read.
    pub fn refresh(&self, force: bool) {
        let stamp = stamp(&self.path);
        if !force && stamp.is_some() && stamp == read_lock(&self.seen) {
            return;
        }
        match self.read(stamp) {
            Ok(count) => tracing::info!(file = %self.path.display(), keys = count, "API keys read"),
            Err(error) => tracing::error!(
                file = %self.path.display(),
                error = format!("{error:#}"),
                "cannot read the API keys; the keys read before stay in force"
            ),
        }
    }

    /// Reads the file, whose modification time and size were `stamp` just before.
    fn read(&self, stamp: Option<(SystemTime, u64)>) -> anyhow::Result<usize> {
        let text = std::fs::read_to_string(&self.path).map_err(|error| {
            anyhow::anyhow!(
                "cannot read {} (AUTH_API_KEYS_FILE): {error}",
                self.path.display()
            )
        })?;
        let entries = parse(&text).map_err(|error| {
            anyhow::anyhow!("{} (AUTH_API_KEYS_FILE): {error}", self.path.display())
        })?;
        let count = entries.len();
        *write_lock(&self.entries) = Arc::new(entries);
        *write_lock(&self.seen) = stamp;
        Ok(count)
    }

    fn current(&self) -> Arc<Vec<Entry>> {
        read_lock(&self.entries).clone()
    }

    /// Checks the file every `interval`, and at once on SIGHUP, until the process ends.
    pub fn watch(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut every = tokio::time::interval(interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let forced = match hangup.as_mut() {
                    Some(hangup) => tokio::select! {
                        _ = every.tick() => false,
                        _ = hangup.recv() => true,
                    },
                    None => {
                        every.tick().await;
                        false
                    }
                };
                #[cfg(not(unix))]
                let forced = {
                    every.tick().await;
                    false
                };
                self.refresh(forced);
            }
        })
    }
}

/// The modification time and size of `path`, if it can be read.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn read_lock<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The file's keys: `name digest` a line, `#` to the end of a line a comment.
fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let mut entries: Vec<Entry> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = n + 1;
        let mut fields = line.split_whitespace();
        let (Some(name), Some(hex), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!(
                "line {at}: expected a name, a space and the key's SHA-256 in hex"
            ));
        };
        if name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
        {
            return Err(format!(
                "line {at}: a name is 1 to 64 of A-Z, a-z, 0-9, '-', '_', '.' and '@'"
            ));
        }
        let digest = digest_of(hex).ok_or_else(|| {
            format!(
                "line {at}: `{}` is not a SHA-256 in hex (64 characters)",
                crate::telemetry::clip(hex)
            )
        })?;
        if entries.iter().any(|e| *e.name == *name) {
            return Err(format!("line {at}: the name `{name}` is given twice"));
        }
        entries.push(Entry {
            name: name.into(),
            digest,
        });
    }
    Ok(entries)
}

fn digest_of(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        digest[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_KEY_SHA256: &str =
        "62af8704764faf8ea82fc61ce9c4c3908b6cb97d463a634e9e587d7c885db0ef";

    #[test]
    fn names_and_digests_are_read_with_comments_and_blank_lines() {
        let text = format!(
            "# who may read\n\ndashboard {TEST_KEY_SHA256}  # the ops board\nreports-2 {}\n",
            "00".repeat(32)
        );

        let entries = parse(&text).expect("valid");

        assert_eq!(entries.len(), 2);
        assert_eq!(&*entries[0].name, "dashboard");
        assert_eq!(entries[1].digest, [0u8; 32]);
    }

    #[test]
    fn a_bad_line_is_refused_naming_it() {
        for (text, says) in [
            ("dashboard", "line 1: expected a name"),
            ("a b c", "line 1: expected a name"),
            (
                &format!("\nbad/name {}", "00".repeat(32)),
                "line 2: a name is",
            ),
            ("dashboard 1234", "line 1: `1234` is not a SHA-256"),
            (&format!("x {}", "zz".repeat(32)), "is not a SHA-256"),
            (
                &format!("x {0}\nx {0}", "00".repeat(32)),
                "line 2: the name `x` is given twice",
            ),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.starts_with(says) || error.contains(says), "{error}");
        }
    }

    #[test]
    fn a_key_is_known_by_its_digest_only() {
        let dir = std::env::temp_dir().join(format!("vs-keys-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a directory");
        let path = dir.join("keys");
        std::fs::write(&path, format!("dashboard {TEST_KEY_SHA256}\n")).expect("write");

        let keys = ApiKeys::load(&path).expect("loads");

        assert_eq!(keys.len(), 1);
        assert_eq!(keys.name_of(b"test-key").as_deref(), Some("dashboard"));
        assert_eq!(keys.name_of(b"test-kez"), None);
        assert_eq!(
            keys.name_of(TEST_KEY_SHA256.as_bytes()),
            None,
            "the digest is not the key"
        );
        std::fs::write(&path, "broken").expect("write");
        keys.refresh(true);
        assert_eq!(
            keys.name_of(b"test-key").as_deref(),
            Some("dashboard"),
            "a broken file keeps what was in force"
        );
        std::fs::write(&path, "# nobody\n").expect("write");
        keys.refresh(true);
        assert!(keys.is_empty(), "read again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

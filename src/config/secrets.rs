//! What settings hold that must not be printed: passwords, and the user information of URLs
//! named in error messages; and the PEM files of certificates and keys, read once at start.

/// A password: printed as `***`, whatever prints the settings.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub(super) fn parse(raw: &str) -> Result<Self, String> {
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A PEM file (a certificate or a key), read once at start; the path names it in messages.
#[derive(Clone)]
pub struct PemFile {
    pub path: std::path::PathBuf,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for PemFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

impl PemFile {
    pub(super) fn read(raw: &str) -> Result<Self, String> {
        let path = std::path::PathBuf::from(raw);
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read {raw}: {e}"))?;
        if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(format!("{raw} is not a PEM file (no -----BEGIN line)"));
        }
        Ok(Self { path, bytes })
    }
}

/// A URL with its user information left out, to name it in an error (everything before the
/// last `@` when the scheme is missing too).
pub(super) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        (_, Some(at)) => format!("***{}", &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_as_stars_and_still_gives_its_text_to_whoever_asks() {
        let secret = Secret::parse("s3cret").expect("any text");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(secret.expose(), "s3cret");
    }
}

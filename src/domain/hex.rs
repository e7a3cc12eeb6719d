//! The spelling of the opaque cursors (`next`/`after`): lowercase hex of their text.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `text` as lowercase hex, two digits a byte.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for b in text.bytes() {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// The text `raw` spells, if it is non-empty lowercase hex of UTF-8 and at most `max_len` long.
pub(crate) fn decode(raw: &str, max_len: usize) -> Option<String> {
    if raw.is_empty() || raw.len() > max_len || !raw.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Vec<u8> = raw
        .as_bytes()
        .chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect::<Option<_>>()?;
    String::from_utf8(bytes).ok()
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

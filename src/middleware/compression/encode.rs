//! The encoders: a whole body in, its encoding out, on the worker thread that made the answer.
//!
//! Why not actix-http's streaming encoder: it moves every chunk over 1 KiB to `spawn_blocking`
//! and gives Brotli a 4 MiB window (zstd one of 2 MiB) whatever the body's size, so 200
//! connections asking for 18 KB batches with `br` held 200 encoders at once and took a replica
//! from 17 MB to 1.17 GB. Every answer here is a body of known length in memory, so it is
//! encoded in one call with a window no larger than the body: at most one encoder per worker
//! thread exists at any moment, and its memory follows from the body, not from the number of
//! clients. The levels were chosen on a 100-answer batch (18,016 bytes), measured with the same
//! C libraries (docs/performance.md, *Compression*):
//!
//! | coding | setting | bytes | µs |
//! |---|---|---:|---:|
//! | gzip | level 1 (kept) | 2,036 | 63 |
//! | gzip | level 6 | 1,686 | 170 |
//! | Brotli | quality 3, 4 MiB window (actix-http's) | 1,723 | 115 |
//! | Brotli | quality 3, window sized to the body (kept) | 1,723 | 57 |
//! | Brotli | quality 5, sized window | 1,529 | 288 |
//! | zstd | level 3, size known (kept) | 1,814 | 24 |
//! | zstd | level 9 | 1,560 | 129 |
//!
//! Each kept setting is the cheapest whose next step up saves under 20 % more bytes for at
//! least twice the CPU.

use std::cell::RefCell;
use std::io::Write as _;

use actix_web::http::header::ContentEncoding;

/// gzip's level: the fastest (as actix-http's was).
const GZIP_LEVEL: u32 = 1;
/// Brotli's quality: the last before the slower hashers (quality 4 and up).
const BROTLI_QUALITY: i32 = 3;
/// Brotli's window, in bits, is the body's size rounded up to a power of two, within these
/// bounds: 1 KiB (Brotli's least) to 256 KiB (larger bodies, Swagger UI's script, lose a few
/// bytes rather than take a larger window).
const BROTLI_LGWIN: (i32, i32) = (10, 18);
/// zstd's level: its default. Told the body's size, zstd sizes its window and tables to it.
const ZSTD_LEVEL: i32 = 3;

thread_local! {
    /// One zstd context per worker thread, reused: its tables are allocated once rather than
    /// per response (grown to the largest body it has encoded).
    static ZSTD: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
}

/// `body` encoded with `coding`, or `None` for identity or a coding this service does not offer,
/// or when an encoder fails (logged; the caller then sends the body as it is).
pub(super) fn encode(coding: ContentEncoding, body: &[u8]) -> Option<Vec<u8>> {
    let encoded = match coding {
        ContentEncoding::Gzip => gzip(body),
        ContentEncoding::Brotli => brotli(body),
        ContentEncoding::Zstd => zstd(body),
        _ => return None,
    };
    match encoded {
        Ok(encoded) => Some(encoded),
        Err(error) => {
            tracing::error!(coding = coding.as_str(), error = %error, "cannot encode a response; sent as it is");
            None
        }
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::new(GZIP_LEVEL),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

fn brotli(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let params = brotli::enc::BrotliEncoderParams {
        quality: BROTLI_QUALITY,
        lgwin: brotli_window(body.len()),
        size_hint: body.len(),
        mode: brotli::enc::backward_references::BrotliEncoderMode::BROTLI_MODE_TEXT,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(body.len() / 4);
    brotli::BrotliCompress(&mut &body[..], &mut out, &params)?;
    Ok(out)
}

/// The smallest window (in bits) that holds `len` bytes, within [`BROTLI_LGWIN`].
fn brotli_window(len: usize) -> i32 {
    let bits = usize::BITS - len.saturating_sub(1).leading_zeros();
    i32::try_from(bits)
        .unwrap_or(BROTLI_LGWIN.1)
        .clamp(BROTLI_LGWIN.0, BROTLI_LGWIN.1)
}

fn zstd(body: &[u8]) -> std::io::Result<Vec<u8>> {
    ZSTD.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match &mut *slot {
            Some(compressor) => compressor,
            empty => empty.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
        };
        compressor.compress(body)
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        let answer = br#"{"vehicle":{"id":2,"make":"AUDI","model":"A4"},"state":"selling","stateSince":"2022-09-11T17:03:17Z","until":null,"timestamp":"2022-09-12T10:00:00Z"}"#;
        answer.iter().copied().cycle().take(len).collect()
    }

    #[test]
    fn every_coding_decodes_back_to_the_body_and_is_smaller() {
        for len in [1, 140, 1024, 18_016, 300_000] {
            let body = sample(len);
            let gz = encode(ContentEncoding::Gzip, &body).expect("gzip");
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut back)
                .expect("gunzip");
            assert_eq!(back, body, "gzip, {len} bytes");

            let br = encode(ContentEncoding::Brotli, &body).expect("br");
            let mut back = Vec::new();
            brotli::Decompressor::new(&br[..], 4096)
                .read_to_end(&mut back)
                .expect("unbrotli");
            assert_eq!(back, body, "br, {len} bytes");

            let zst = encode(ContentEncoding::Zstd, &body).expect("zstd");
            assert_eq!(
                zstd::bulk::decompress(&zst, len).expect("unzstd"),
                body,
                "zstd, {len} bytes"
            );
            if len >= 1024 {
                assert!(gz.len() < len / 4 && br.len() < len / 4 && zst.len() < len / 4);
            }
        }
        assert_eq!(encode(ContentEncoding::Identity, b"abc"), None);
    }

    #[test]
    fn brotli_s_window_is_the_body_s_size_within_its_bounds() {
        for (len, bits) in [
            (0, 10),
            (1, 10),
            (1024, 10),
            (1025, 11),
            (18_016, 15),
            (32_768, 15),
            (32_769, 16),
            (262_144, 18),
            (5_000_000, 18),
        ] {
            assert_eq!(brotli_window(len), bits, "{len} bytes");
        }
    }
}

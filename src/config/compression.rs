//! Which responses are compressed.

use clap::Args;

/// Compression of response bodies, as the client's `Accept-Encoding` asks.
#[derive(Debug, Clone, Copy, Args)]
#[command(next_help_heading = "Compression")]
pub struct CompressionSettings {
    /// Compress response bodies with gzip, Brotli or zstd, whichever the client's
    /// `Accept-Encoding` prefers. false: every body is sent as it is (as when a proxy in front
    /// compresses).
    #[arg(id = "COMPRESSION", long = "compression", env = "COMPRESSION", default_value = "true", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub enabled: bool,

    /// Smallest body compressed, in bytes. Smaller ones (a single lookup's answer is about 140)
    /// are sent as they are: compressing them costs more time than the bytes it saves.
    #[arg(long = "compression-min-bytes", id = "COMPRESSION_MIN_BYTES", env = "COMPRESSION_MIN_BYTES", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(0..=1_073_741_824))]
    pub min_bytes: u32,
}

impl CompressionSettings {
    /// The smallest body to compress, or `None` when compression is off.
    pub fn threshold(&self) -> Option<u64> {
        self.enabled.then_some(u64::from(self.min_bytes))
    }
}

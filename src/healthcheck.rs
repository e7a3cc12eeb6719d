//! `vehicle-state healthcheck`: asks a running server's `/readyz` and answers with the exit code,
//! so container health checks need no curl or shell in the image.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub async fn check(addr: &str, timeout: Duration) -> anyhow::Result<()> {
    tokio::time::timeout(timeout, ask(addr))
        .await
        .with_context(|| format!("{addr} did not answer within {timeout:?}"))?
}

async fn ask(addr: &str) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .context("cannot send the request")?;
    // The status line is all that matters; 64 bytes hold it.
    let mut head = [0u8; 64];
    let n = stream
        .read(&mut head)
        .await
        .context("cannot read the answer")?;
    let status = head[..n].split(|b| *b == b' ').nth(1).unwrap_or_default();
    if status != b"200" {
        bail!("/readyz answered {}", String::from_utf8_lossy(status));
    }
    Ok(())
}

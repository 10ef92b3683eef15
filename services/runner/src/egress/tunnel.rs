//! A tunnel's bytes, both ways, until either side is done or neither has
//! sent anything for a while: an idle tunnel holds one of the sandbox's
//! connections and two descriptors of the runner's for nothing.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a tunnel may carry nothing either way before it is closed.
pub const IDLE: Duration = Duration::from_secs(600);

/// Copies between `client` and `upstream` until both directions end or
/// nothing moved for `idle`: the bytes the client sent, and received.
pub async fn relay<A, B>(client: A, upstream: B, idle: Duration) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let (out, back) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut client = Stamped {
        inner: client,
        read: out.clone(),
        last: last.clone(),
        start,
    };
    let mut upstream = Stamped {
        inner: upstream,
        read: back.clone(),
        last: last.clone(),
        start,
    };
    {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        loop {
            let quiet = start
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            let Some(left) = idle.checked_sub(quiet).filter(|left| !left.is_zero()) else {
                tracing::debug!("an idle egress tunnel closed");
                break;
            };
            tokio::select! {
                _ = &mut copy => break,
                () = tokio::time::sleep(left) => {}
            }
        }
    }
    (out.load(Ordering::Relaxed), back.load(Ordering::Relaxed))
}

/// A stream that counts what is read from it and notes when.
struct Stamped<S> {
    inner: S,
    read: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
    start: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Stamped<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.read.fetch_add(read, Ordering::Relaxed);
            let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stamped<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_tunnel_that_carries_nothing_is_closed_and_its_bytes_counted() {
        let (client, mut sandbox) = tokio::io::duplex(1024);
        let (upstream, mut server) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(client, upstream, Duration::from_millis(400)));
        sandbox.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        server.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        sandbox.read_exact(&mut got).await.unwrap();
        // Traffic within the limit keeps it open.
        tokio::time::sleep(Duration::from_millis(250)).await;
        sandbox.write_all(b"!").await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!relay.is_finished(), "active within the limit");
        // Then nothing, both ways.
        let counted = tokio::time::timeout(Duration::from_secs(5), relay).await;
        assert_eq!(counted.unwrap().unwrap(), (6, 2));
    }
}

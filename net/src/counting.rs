//! Wire bytes as the transport sees them: every byte a TCP connection carries, noise and yamux
//! framing, gossip forwarding and heartbeats included, so that reports measure what a volunteer's
//! uplink really pays rather than the size of the update payloads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};

use crate::protocol_bytes::ProtocolBytes;

/// Bytes sent and received over a node's counted connections, since it started.
#[derive(Debug, Default)]
pub struct WireCounters {
    sent: AtomicU64,
    received: AtomicU64,
    /// Peers the node is connected to now (set by its network task).
    connected: AtomicU64,
    /// The same connections' substream bytes, by protocol (where the transport counts them).
    pub protocols: Arc<ProtocolBytes>,
}

impl WireCounters {
    /// Bytes written to the network so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Bytes read from the network so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Peers the node is connected to now.
    pub fn connected_peers(&self) -> usize {
        self.connected.load(Ordering::Relaxed) as usize
    }

    /// Records how many peers the node is connected to.
    pub(crate) fn set_connected_peers(&self, n: usize) {
        self.connected.store(n as u64, Ordering::Relaxed);
    }
}

/// A connection that adds what passes through it to shared counters.
#[derive(Debug)]
pub struct Counting<S> {
    inner: S,
    counters: Arc<WireCounters>,
}

impl<S> Counting<S> {
    /// Counts `inner`'s traffic into `counters`.
    pub fn new(inner: S, counters: Arc<WireCounters>) -> Self {
        Self { inner, counters }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.counters
                .received
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn reads_and_writes_are_counted() {
        let counters = Arc::new(WireCounters::default());
        futures::executor::block_on(async {
            let mut out = Counting::new(futures::io::Cursor::new(Vec::new()), counters.clone());
            out.write_all(b"hello wire").await.unwrap();
            let mut inp = Counting::new(futures::io::Cursor::new(vec![7u8; 33]), counters.clone());
            let mut buf = Vec::new();
            inp.read_to_end(&mut buf).await.unwrap();
        });
        assert_eq!(counters.sent(), 10);
        assert_eq!(counters.received(), 33);
    }
}

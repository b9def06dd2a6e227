//! Wire bytes by protocol: every substream of a counted connection is tallied under the protocol
//! multistream-select negotiated on it, read from the substream's own first bytes, so that a report
//! can say which protocol a peer's uplink pays for (gossipsub, kad, identify, the update pulls…)
//! rather than only how much it pays. The tallies are substream payloads: noise and yamux framing
//! are only in [`crate::WireCounters`], whose total is the larger.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};

/// Distinct protocol names tallied; any further name (a remote may propose any) counts as
/// [`OTHER`], so the table stays bounded whatever the network sends.
const MAX_PROTOCOLS: usize = 32;
/// Where bytes of protocols beyond [`MAX_PROTOCOLS`] go.
pub const OTHER: &str = "other";
/// Where bytes of a substream whose protocol could not be read go.
pub const UNKNOWN: &str = "unknown";
/// Negotiation bytes read before a substream is called [`UNKNOWN`] (a proposal is one short line).
const SNIFF_LIMIT: usize = 512;
/// multistream-select's own header line, not a protocol.
const MULTISTREAM: &[u8] = b"/multistream/1.0.0";

/// Bytes one protocol's substreams sent and received.
#[derive(Debug, Default)]
struct Pair {
    sent: AtomicU64,
    received: AtomicU64,
}

/// A node's bytes by protocol, shared by all of its counted connections.
#[derive(Debug, Default)]
pub struct ProtocolBytes {
    slots: Mutex<Vec<(String, Arc<Pair>)>>,
}

impl ProtocolBytes {
    /// Bytes sent and received so far, by protocol name.
    pub fn snapshot(&self) -> BTreeMap<String, (u64, u64)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter()
            .map(|(name, pair)| {
                let sent = pair.sent.load(Ordering::Relaxed);
                let received = pair.received.load(Ordering::Relaxed);
                (name.clone(), (sent, received))
            })
            .collect()
    }

    /// The tally of `name`, made on first use (or [`OTHER`]'s, once the table is full).
    fn slot(&self, name: &str) -> Arc<Pair> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, pair)) = slots.iter().find(|(n, _)| n == name) {
            return pair.clone();
        }
        let name = if slots.len() + 1 < MAX_PROTOCOLS {
            name
        } else {
            OTHER
        };
        if let Some((_, pair)) = slots.iter().find(|(n, _)| n == name) {
            return pair.clone();
        }
        let pair = Arc::new(Pair::default());
        slots.push((name.to_string(), pair.clone()));
        pair
    }
}

/// The first protocol a dialer proposes in `bytes` (multistream-select: each message a uvarint
/// length, then that many bytes ending in `\n`); `Ok(None)` while more bytes may tell, `Err` when
/// they cannot.
fn proposed_protocol(bytes: &[u8]) -> Result<Option<String>, ()> {
    let mut rest = bytes;
    loop {
        let Some((len, after)) = uvarint(rest)? else {
            return Ok(None);
        };
        if len == 0 || len > SNIFF_LIMIT {
            return Err(());
        }
        let Some(message) = after.get(..len) else {
            return Ok(None);
        };
        let line = message.strip_suffix(b"\n").ok_or(())?;
        if line.first() == Some(&b'/') && line != MULTISTREAM {
            // Protocol names are ASCII; keep a bounded, printable copy.
            let name: String = line
                .iter()
                .take(64)
                .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
                .collect();
            return Ok(Some(name));
        }
        rest = &after[len..];
    }
}

/// A uvarint and what follows it; `Ok(None)` while it is cut short, `Err` past two bytes (no
/// proposal is that long).
fn uvarint(bytes: &[u8]) -> Result<Option<(usize, &[u8])>, ()> {
    let mut value = 0usize;
    for (i, &b) in bytes.iter().enumerate().take(2) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, &bytes[i + 1..])));
        }
    }
    if bytes.len() < 2 { Ok(None) } else { Err(()) }
}

/// A muxer whose substreams tally their bytes under their protocol in a [`ProtocolBytes`].
#[derive(Debug)]
pub struct ProtocolCounting<M> {
    inner: M,
    tally: Arc<ProtocolBytes>,
}

impl<M> ProtocolCounting<M> {
    /// Counts the substreams of `inner` into `tally`.
    pub fn new(inner: M, tally: Arc<ProtocolBytes>) -> Self {
        Self { inner, tally }
    }
}

impl<M> StreamMuxer for ProtocolCounting<M>
where
    M: StreamMuxer + Unpin,
    M::Substream: Unpin,
{
    type Substream = CountedSubstream<M::Substream>;
    type Error = M::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let tally = self.tally.clone();
        Pin::new(&mut self.inner)
            .poll_inbound(cx)
            .map_ok(|s| CountedSubstream::new(s, tally, false))
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        let tally = self.tally.clone();
        Pin::new(&mut self.inner)
            .poll_outbound(cx)
            .map_ok(|s| CountedSubstream::new(s, tally, true))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// One substream, counted: until its protocol is read from the dialer's proposal, its bytes are
/// held here, then added to that protocol's tally.
#[derive(Debug)]
pub struct CountedSubstream<S> {
    inner: S,
    tally: Arc<ProtocolBytes>,
    /// Whether this side dialed the substream (its proposal is in what it writes).
    outbound: bool,
    /// The proposal's bytes so far, while the protocol is not known.
    sniffed: Vec<u8>,
    /// Bytes sent and received before the protocol was known.
    pending: (u64, u64),
    /// The protocol's tally, once known.
    pair: Option<Arc<Pair>>,
}

impl<S> CountedSubstream<S> {
    fn new(inner: S, tally: Arc<ProtocolBytes>, outbound: bool) -> Self {
        Self {
            inner,
            tally,
            outbound,
            sniffed: Vec::new(),
            pending: (0, 0),
            pair: None,
        }
    }

    /// Tallies `n` bytes that passed (`sent`: written), reading the proposal from the direction
    /// that carries it.
    fn count(&mut self, bytes: &[u8], sent: bool) {
        let n = bytes.len() as u64;
        if let Some(pair) = &self.pair {
            let counter = if sent { &pair.sent } else { &pair.received };
            counter.fetch_add(n, Ordering::Relaxed);
            return;
        }
        if sent {
            self.pending.0 += n;
        } else {
            self.pending.1 += n;
        }
        if sent != self.outbound {
            return;
        }
        let room = SNIFF_LIMIT.saturating_sub(self.sniffed.len());
        self.sniffed
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        let name = match proposed_protocol(&self.sniffed) {
            Ok(Some(name)) => name,
            Ok(None) if self.sniffed.len() < SNIFF_LIMIT => return,
            _ => UNKNOWN.to_string(),
        };
        self.settle(&name);
    }

    /// Moves what was held to `name`'s tally; later bytes go there directly.
    fn settle(&mut self, name: &str) {
        let pair = self.tally.slot(name);
        pair.sent.fetch_add(self.pending.0, Ordering::Relaxed);
        pair.received.fetch_add(self.pending.1, Ordering::Relaxed);
        self.pending = (0, 0);
        self.sniffed = Vec::new();
        self.pair = Some(pair);
    }
}

impl<S> Drop for CountedSubstream<S> {
    fn drop(&mut self) {
        if self.pair.is_none() && self.pending != (0, 0) {
            self.settle(UNKNOWN);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CountedSubstream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.count(&buf[..n], false);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountedSubstream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.count(&buf[..n], true);
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

    /// A multistream-select message: uvarint length, then the line.
    fn message(line: &str) -> Vec<u8> {
        let line = format!("{line}\n");
        let mut out = vec![line.len() as u8];
        out.extend_from_slice(line.as_bytes());
        out
    }

    #[test]
    fn the_proposal_names_the_protocol_and_garbage_is_unknown() {
        let mut proposal = message("/multistream/1.0.0");
        assert_eq!(proposed_protocol(&proposal), Ok(None));
        proposal.extend(message("/meshsub/1.2.0"));
        assert_eq!(proposed_protocol(&proposal[..proposal.len() - 3]), Ok(None));
        assert_eq!(
            proposed_protocol(&proposal),
            Ok(Some("/meshsub/1.2.0".to_string()))
        );
        assert_eq!(proposed_protocol(b"\x05hello"), Err(()));
        assert_eq!(proposed_protocol(&[0xff, 0xff, 0xff, 0xff]), Err(()));
    }

    #[test]
    fn a_substream_counts_under_its_protocol_the_negotiation_included() {
        let tally = Arc::new(ProtocolBytes::default());
        futures::executor::block_on(async {
            // The dialer writes its proposal, then 100 bytes, and reads a 7-byte answer.
            let mut out =
                CountedSubstream::new(futures::io::Cursor::new(Vec::new()), tally.clone(), true);
            let mut proposal = message("/multistream/1.0.0");
            proposal.extend(message("/gradswarm/update/1"));
            out.write_all(&proposal).await.unwrap();
            out.write_all(&[1u8; 100]).await.unwrap();
            // The listener reads the same bytes.
            let mut bytes = proposal.clone();
            bytes.extend([1u8; 100]);
            let mut inp =
                CountedSubstream::new(futures::io::Cursor::new(bytes), tally.clone(), false);
            let mut buf = Vec::new();
            inp.read_to_end(&mut buf).await.unwrap();
            // A substream of garbage is counted, as unknown, when it goes.
            let mut junk = CountedSubstream::new(
                futures::io::Cursor::new(vec![0xffu8; 40]),
                tally.clone(),
                false,
            );
            junk.read_to_end(&mut Vec::new()).await.unwrap();
        });
        let seen = tally.snapshot();
        let n = (message("/multistream/1.0.0").len() + message("/gradswarm/update/1").len() + 100)
            as u64;
        assert_eq!(seen["/gradswarm/update/1"], (n, n));
        assert_eq!(seen[UNKNOWN], (0, 40));
    }

    #[test]
    fn names_beyond_the_table_count_as_other() {
        let tally = ProtocolBytes::default();
        for i in 0..100 {
            tally
                .slot(&format!("/p/{i}"))
                .sent
                .fetch_add(1, Ordering::Relaxed);
        }
        let seen = tally.snapshot();
        assert_eq!(seen.len(), MAX_PROTOCOLS);
        assert_eq!(seen[OTHER].0, 100 - (MAX_PROTOCOLS as u64 - 1));
    }
}

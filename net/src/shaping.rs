//! A home connection in user space: a node's TCP connections share one uplink and one downlink of
//! a given bandwidth, and every byte it sends arrives half an RTT later, so that a harness scenario
//! on loopback can say `uplink_mbit = 10, downlink_mbit = 50, rtt_ms = 60` and its report shows
//! what such a link costs. The rate logic ([`TokenBucket`], [`DelayLine`]) is plain arithmetic on
//! times handed in, tested without clocks; [`Shaped`] applies it to a real connection.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite, FutureExt};
use futures_timer::Delay;

use crate::LinkShape;

/// Bytes a bucket may hold: a short burst at line rate, as a modem's queue lets through.
const BURST_SECONDS: f64 = 0.01;

/// A token bucket over bytes: `rate` bytes per second, at most `burst` at once.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    /// When `tokens` was last brought up to date, seconds on the caller's clock.
    at: f64,
}

impl TokenBucket {
    /// A full bucket of `rate` bytes per second at time `now` (seconds).
    pub fn new(rate: f64, now: f64) -> Self {
        let burst = (rate * BURST_SECONDS).max(1500.0);
        Self {
            rate: rate.max(1.0),
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes up to `want` bytes at `now`: how many may pass, or, when none, the seconds until
    /// one may.
    pub fn take(&mut self, now: f64, want: usize) -> Result<usize, f64> {
        if now > self.at {
            self.tokens = (self.tokens + (now - self.at) * self.rate).min(self.burst);
            self.at = now;
        }
        let n = (self.tokens.floor() as usize).min(want);
        if n == 0 && want > 0 {
            return Err((1.0 - self.tokens) / self.rate);
        }
        self.tokens -= n as f64;
        Ok(n)
    }
}

/// Bytes in flight on a link with a fixed delay: what was sent at `t` may be delivered at
/// `t + delay`.
#[derive(Debug, Default)]
pub struct DelayLine {
    queue: VecDeque<(f64, Vec<u8>)>,
    held: usize,
}

/// Bytes a delay line holds at most (one RTT at 100 Mbit/s is ~750 KB; past this a writer waits).
pub const MAX_IN_FLIGHT: usize = 1 << 20;

impl DelayLine {
    /// Queues `bytes`, sent at `now`, for delivery after `delay` seconds.
    pub fn push(&mut self, now: f64, delay: f64, bytes: &[u8]) {
        self.held += bytes.len();
        self.queue.push_back((now + delay, bytes.to_vec()));
    }

    /// Room left before a writer must wait.
    pub fn room(&self) -> usize {
        MAX_IN_FLIGHT.saturating_sub(self.held)
    }

    /// The bytes due at `now` (front first), or when the next ones are due.
    pub fn due(&self, now: f64) -> Result<&[u8], Option<f64>> {
        match self.queue.front() {
            Some((at, bytes)) if *at <= now => Ok(bytes),
            Some((at, _)) => Err(Some(*at)),
            None => Err(None),
        }
    }

    /// Marks `n` bytes of the front chunk delivered.
    pub fn delivered(&mut self, n: usize) {
        if let Some((_, front)) = self.queue.front_mut() {
            let n = n.min(front.len());
            front.drain(..n);
            self.held -= n;
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// One node's link, shared by all its connections.
#[derive(Debug)]
pub struct Link {
    shape: LinkShape,
    epoch: Instant,
    up: Mutex<TokenBucket>,
    down: Mutex<TokenBucket>,
}

impl Link {
    /// A link of `shape`, its buckets full.
    pub fn new(shape: LinkShape) -> Arc<Self> {
        Arc::new(Self {
            shape,
            epoch: Instant::now(),
            up: Mutex::new(TokenBucket::new(shape.up_bps / 8.0, 0.0)),
            down: Mutex::new(TokenBucket::new(shape.down_bps / 8.0, 0.0)),
        })
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Returns downlink tokens taken for bytes that did not come.
    fn give_back(&self, bytes: f64) {
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.tokens = (down.tokens + bytes).min(down.burst);
    }
}

/// A connection behind a [`Link`]: reads take downlink tokens, writes take uplink tokens and
/// then wait half the RTT in a [`DelayLine`] before they reach the socket. Without a link it
/// passes everything straight through.
pub struct Shaped<S> {
    inner: S,
    link: Option<Arc<Link>>,
    line: DelayLine,
    /// Waits for downlink tokens.
    read_timer: Option<Delay>,
    /// Waits for uplink tokens.
    send_timer: Option<Delay>,
    /// Waits for the next bytes in flight to be due.
    write_timer: Option<Delay>,
}

impl<S> Shaped<S> {
    /// `inner` behind `link` (none: unshaped).
    pub fn new(inner: S, link: Option<Arc<Link>>) -> Self {
        Self {
            inner,
            link,
            line: DelayLine::default(),
            read_timer: None,
            send_timer: None,
            write_timer: None,
        }
    }
}

/// Ready once `seconds` have passed (polling `timer`, made anew when `None`).
fn wait(timer: &mut Option<Delay>, seconds: f64, cx: &mut Context<'_>) -> Poll<()> {
    let t = timer.get_or_insert_with(|| Delay::new(Duration::from_secs_f64(seconds.max(0.0))));
    match t.poll_unpin(cx) {
        Poll::Ready(()) => {
            *timer = None;
            Poll::Ready(())
        }
        Poll::Pending => Poll::Pending,
    }
}

impl<S: AsyncWrite + Unpin> Shaped<S> {
    /// Writes what is due to the socket; Ready once the line is empty.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(link) = self.link.clone() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            let now = link.now();
            match self.line.due(now) {
                Ok(bytes) => match Pin::new(&mut self.inner).poll_write(cx, bytes) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => self.line.delivered(n),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                },
                Err(Some(at)) => {
                    if wait(&mut self.write_timer, at - now, cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                Err(None) => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Shaped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(link) = this.link.clone() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            let now = link.now();
            let granted = link
                .down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(now, buf.len());
            match granted {
                Ok(n) => {
                    let poll = Pin::new(&mut this.inner).poll_read(cx, &mut buf[..n]);
                    if let Poll::Ready(Ok(got)) = poll
                        && got < n
                    {
                        // Tokens for bytes that did not come go back.
                        link.give_back((n - got) as f64);
                    } else if poll.is_pending() {
                        link.give_back(n as f64);
                    }
                    return poll;
                }
                Err(seconds) => {
                    if wait(&mut this.read_timer, seconds, cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Shaped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let Some(link) = this.link.clone() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Poll::Ready(Err(e)) = this.drain(cx) {
            return Poll::Ready(Err(e));
        }
        loop {
            let room = this.line.room().min(buf.len());
            if room == 0 {
                // The line is full: the drain above registered its wake-up.
                return Poll::Pending;
            }
            let now = link.now();
            let granted = link
                .up
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(now, room);
            match granted {
                Ok(n) => {
                    this.line
                        .push(now, link.shape.rtt.as_secs_f64() / 2.0, &buf[..n]);
                    // Schedule the delivery: a writer that goes quiet now still gets its bytes out.
                    let _ = this.drain(cx);
                    return Poll::Ready(Ok(n));
                }
                Err(seconds) => {
                    if wait(&mut this.send_timer, seconds, cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match this.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_close(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_bucket_passes_its_rate_and_no_more() {
        // 1 MB/s: a 10 ms burst (10 kB) at once, then 1 kB per millisecond.
        let mut b = TokenBucket::new(1e6, 0.0);
        assert_eq!(b.take(0.0, 1 << 20), Ok(10_000));
        let wait = b.take(0.0, 100).expect_err("empty");
        assert!((wait - 1e-6).abs() < 1e-9, "{wait}");
        assert_eq!(b.take(0.001, 1 << 20), Ok(1000));
        // Over a second of steady asking, a second's worth passes (plus the burst).
        let mut passed = 0;
        let mut t = 0.001;
        while t < 1.001 {
            t += 0.0005;
            passed += b.take(t, 1 << 20).unwrap_or(0);
        }
        assert!((999_000..=1_001_000).contains(&passed), "{passed}");
        // Idle time refills no more than the burst.
        assert_eq!(b.take(100.0, 1 << 20), Ok(10_000));
    }

    #[test]
    fn a_delay_line_delivers_in_order_after_its_delay() {
        let mut line = DelayLine::default();
        line.push(0.0, 0.03, b"hello ");
        line.push(0.01, 0.03, b"world");
        assert_eq!(line.due(0.0), Err(Some(0.03)));
        assert_eq!(line.due(0.03), Ok(&b"hello "[..]));
        line.delivered(3);
        assert_eq!(line.due(0.03), Ok(&b"lo "[..]));
        line.delivered(3);
        assert_eq!(line.due(0.035), Err(Some(0.04)));
        assert_eq!(line.due(0.05), Ok(&b"world"[..]));
        line.delivered(5);
        assert!(line.is_empty() && line.due(1.0) == Err(None));
        assert_eq!(line.room(), MAX_IN_FLIGHT);
    }

    #[test]
    fn a_shaped_connection_carries_every_byte_in_order() {
        let link = Link::new(LinkShape {
            up_bps: 8e6,
            down_bps: 8e6,
            rtt: Duration::from_millis(4),
        });
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        futures::executor::block_on(async {
            let mut out = Shaped::new(futures::io::Cursor::new(Vec::new()), Some(link.clone()));
            out.write_all(&data).await.expect("write");
            out.flush().await.expect("flush");
            assert_eq!(out.inner.get_ref(), &data);
            let mut inp = Shaped::new(futures::io::Cursor::new(data.clone()), Some(link));
            let mut back = Vec::new();
            inp.read_to_end(&mut back).await.expect("read");
            assert_eq!(back, data);
        });
    }
}

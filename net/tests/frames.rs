//! A request stream that announces a full-size frame and then stalls holds only the bytes it
//! sent, not the size it claimed (issue 26, attack 16). Before, `read_frame` allocated the claimed
//! length at once, so 100 stalled streams of one stranger held 100 MiB until they timed out.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::AsyncRead;
use futures::task::noop_waker;
use gradswarm_core::wire::MAX_RPC_BYTES;
use gradswarm_net::{RpcCodec, STATE_PROTOCOL};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;

/// Counts the bytes this thread holds, so that other tests' threads do not blur the figure.
struct Counting;

thread_local! {
    static HELD: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(delta: isize) {
    // `try_with`: the thread-locals may already be gone while a thread tears down.
    let _ = HELD.try_with(|held| {
        let now = held.get() + delta;
        held.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A stream that sends a length prefix and `sent` bytes of the body, then nothing more.
struct Stalled {
    bytes: Vec<u8>,
    at: usize,
}

impl AsyncRead for Stalled {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.at == self.bytes.len() {
            return Poll::Pending;
        }
        let n = buf.len().min(self.bytes.len() - self.at);
        let at = self.at;
        buf[..n].copy_from_slice(&self.bytes[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(n))
    }
}

#[test]
fn a_stalled_frame_holds_what_it_sent_not_what_it_claimed() {
    let sent = 100;
    let mut bytes = (MAX_RPC_BYTES as u32).to_le_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(7u8, sent));
    let mut stream = Stalled { bytes, at: 0 };
    let protocol = StreamProtocol::new(STATE_PROTOCOL);
    let mut codec = RpcCodec;
    let waker = noop_waker();
    let mut cx = Context::from_waker(&waker);

    let before = HELD.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let mut read = codec.read_request(&protocol, &mut stream);
    assert!(read.as_mut().poll(&mut cx).is_pending());
    assert!(read.as_mut().poll(&mut cx).is_pending());
    let held = PEAK.with(Cell::get) - before;
    drop(read);
    eprintln!("a stalled {MAX_RPC_BYTES}-byte frame with {sent} bytes sent held {held} bytes");
    assert!(
        held < 64 * 1024,
        "reading a stalled frame held {held} bytes for {sent} received (claimed {MAX_RPC_BYTES})"
    );
}

#[test]
fn a_frame_cut_short_is_an_error_and_a_whole_one_parses() {
    let request = gradswarm_core::Request::Fingerprint {
        run_id: "r".into(),
        model_hash: [3; 32],
        round: 9,
        sealed: false,
    };
    let body = gradswarm_core::wire::encode_versioned(&request);
    let mut whole = (body.len() as u32).to_le_bytes().to_vec();
    whole.extend_from_slice(&body);
    let protocol = StreamProtocol::new(STATE_PROTOCOL);
    let parsed = futures::executor::block_on(
        RpcCodec.read_request(&protocol, &mut futures::io::Cursor::new(whole.clone())),
    )
    .expect("a whole frame parses");
    assert_eq!(parsed, request);
    let cut = &whole[..whole.len() - 3];
    let err = futures::executor::block_on(
        RpcCodec.read_request(&protocol, &mut futures::io::Cursor::new(cut.to_vec())),
    )
    .expect_err("a frame cut short is an error");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
}

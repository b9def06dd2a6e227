//! The request-response codec: a u32 length prefix, then a versioned postcard frame, with the
//! length checked before anything is allocated.
//!
//! Not libp2p's `cbor`/`json` codecs: they would put a second encoding on the wire beside the
//! versioned postcard of every other message, and a serde format crate in the browser's build, for
//! no stronger bound than the length check here (docs/architecture.md, "Framing").

use std::io;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use gradswarm_core::wire::{MAX_RPC_BYTES, decode_versioned, encode_versioned};
use gradswarm_core::{Request, Response};
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;

/// Frames [`Request`]s and [`Response`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcCodec;

/// Reads one length-prefixed frame. The buffer grows with the bytes that actually arrive, not
/// with the length the sender claims: a stream that announces 1 MiB and then stalls holds only
/// what it sent until the protocol's timeout closes it (issue 26, attack 16).
async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_RPC_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_RPC_BYTES}"),
        ));
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; READ_CHUNK];
    while buf.len() < len {
        let want = (len - buf.len()).min(READ_CHUNK);
        let got = io.read(&mut chunk[..want]).await?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("frame ended after {} of {len} bytes", buf.len()),
            ));
        }
        buf.extend_from_slice(&chunk[..got]);
    }
    Ok(buf)
}

/// Bytes read from a stream at a time (the largest a stalled frame holds beyond what it sent).
const READ_CHUNK: usize = 16 * 1024;

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_le_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    decode_versioned(bytes, MAX_RPC_BYTES)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

#[async_trait]
impl Codec for RpcCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        parse(&read_frame(io).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        parse(&read_frame(io).await?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode_versioned(&request)).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &encode_versioned(&response)).await
    }
}

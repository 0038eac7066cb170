//! Request/response framing on bi-directional streams, and datagram helpers.

use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::NetError;

/// Version byte at the start of every frame body.
pub const FRAME_VERSION: u8 = 1;

/// Largest datagram guaranteed to fit before path-MTU discovery (quinn's initial MTU of 1200
/// bytes minus overheads). Keep foca's `max_packet_size` ≤ 1100 (trap T2). The tests check
/// a datagram of this size goes through.
#[cfg(test)]
pub const MAX_DATAGRAM: usize = 1162;

/// Application code sent with STOP_SENDING when a peer's frame is too large.
const STOP_FRAME_TOO_LARGE: u32 = 1;

/// Writes one frame: `tag`, the body length (u32, big-endian), then the body
/// ([`FRAME_VERSION`] followed by the postcard encoding of `msg`). Does not finish the stream.
pub async fn write_frame<T: Serialize + ?Sized>(
    send: &mut SendStream,
    tag: u8,
    msg: &T,
) -> Result<(), NetError> {
    let mut buf = postcard::to_extend(msg, vec![tag, 0, 0, 0, 0, FRAME_VERSION])
        .map_err(|e| NetError::Malformed(format!("cannot encode message: {e}")))?;
    let body_len = buf.len() - 5;
    let len = u32::try_from(body_len).map_err(|_| NetError::FrameTooLarge {
        len: body_len as u64,
        max: u32::MAX as usize,
    })?;
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    send.write_all(&buf).await?;
    Ok(())
}

/// Bound on reading one request frame with [`read_frame_raw`]: a peer that opens a stream
/// and sends nothing, or announces a body and trickles it, is cut off after this long. A
/// request of the largest size Shoal sends on a LAN arrives in milliseconds; callers that
/// expect big frames over slow links pass their own bound to [`read_frame_raw_within`] or
/// [`read_header`]/[`read_body`].
pub const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Length of a frame header: `tag: u8 | len: u32 big-endian`.
pub const FRAME_HEADER_LEN: usize = 5;

/// Application code sent with STOP_SENDING when a peer's frame did not arrive in time.
const STOP_READ_TIMEOUT: u32 = 2;

/// The body buffer starts at most this large and grows as bytes actually arrive, so a peer
/// announcing a large body and sending little costs little memory.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// Reads one frame written by [`write_frame`], returning its tag and message. A body longer
/// than `max_len` bytes is refused before anything is allocated; an unknown version or an
/// undecodable body is an error. Trailing bytes after the message are ignored, but postcard
/// cannot decode a struct from bytes written before a field was added: a changed message
/// needs a new enum variant or a new frame version (ARCHITECTURE.md, "Formats and upgrades").
///
/// No deadline: this waits as long as the peer is silent, which is what a long-lived session
/// stream (several frames, far apart) needs. Bound it with a timeout, or use
/// [`read_frame_raw_within`], when reading a request from a peer that could stall on purpose.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max_len: usize,
) -> Result<(u8, T), NetError> {
    let (tag, len) = read_header_untimed(recv).await?;
    let body = read_body_untimed(recv, len, max_len).await?;
    Ok((tag, decode_body(tag, &body)?))
}

/// [`read_frame`] bounded by `timeout` for the whole frame (header and body); on expiry the
/// stream is stopped and [`NetError::ReadTimeout`] returned. Only the tests read a typed
/// frame under a deadline; servers read raw frames and decode by tag.
#[cfg(test)]
pub async fn read_frame_within<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max_len: usize,
    timeout: Duration,
) -> Result<(u8, T), NetError> {
    let (tag, body) = read_frame_raw_within(recv, max_len, timeout).await?;
    Ok((tag, decode_body(tag, &body)?))
}

/// Reads one frame without decoding its message: the tag and the body (version byte
/// included), for servers that choose the message type by tag. Same limits as
/// [`read_frame`], and the whole frame must arrive within [`FRAME_READ_TIMEOUT`] (see
/// [`read_frame_raw_within`]).
pub async fn read_frame_raw(
    recv: &mut RecvStream,
    max_len: usize,
) -> Result<(u8, Vec<u8>), NetError> {
    read_frame_raw_within(recv, max_len, FRAME_READ_TIMEOUT).await
}

/// [`read_frame_raw`] with an explicit deadline for the whole frame (header and body). A
/// peer that sends nothing, or trickles, is cut off when `timeout` expires: the stream is
/// stopped and [`NetError::ReadTimeout`] returned.
pub async fn read_frame_raw_within(
    recv: &mut RecvStream,
    max_len: usize,
    timeout: Duration,
) -> Result<(u8, Vec<u8>), NetError> {
    let read = async {
        let (tag, len) = read_header_untimed(recv).await?;
        let body = read_body_untimed(recv, len, max_len).await?;
        Ok((tag, body))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(res) => res,
        Err(_) => Err(timed_out(recv, timeout)),
    }
}

/// Reads a frame header only: the tag and the announced body length, within `timeout`. Lets
/// a server authorize the tag, and pick that tag's size limit and deadline, before reading
/// the body with [`read_body`]. On expiry the stream is stopped and
/// [`NetError::ReadTimeout`] returned.
pub async fn read_header(recv: &mut RecvStream, timeout: Duration) -> Result<(u8, u32), NetError> {
    match tokio::time::timeout(timeout, read_header_untimed(recv)).await {
        Ok(res) => res,
        Err(_) => Err(timed_out(recv, timeout)),
    }
}

/// Reads the body of a frame whose header [`read_header`] returned (`tag` is only used in
/// error messages), within `timeout`. A `len` over `max_len` is refused (and the stream
/// stopped) before anything is allocated; an empty body is malformed. Memory grows with the
/// bytes that actually arrive, never beyond `len`. Returns the body, version byte included,
/// for [`decode_body`].
pub async fn read_body(
    recv: &mut RecvStream,
    tag: u8,
    len: u32,
    max_len: usize,
    timeout: Duration,
) -> Result<Vec<u8>, NetError> {
    match tokio::time::timeout(timeout, read_body_untimed(recv, len, max_len)).await {
        Ok(Err(NetError::Malformed(m))) => Err(NetError::Malformed(format!("{m} (tag {tag})"))),
        Ok(res) => res,
        Err(_) => Err(timed_out(recv, timeout)),
    }
}

/// Stops the stream after a read deadline expired and returns the error to report.
fn timed_out(recv: &mut RecvStream, after: Duration) -> NetError {
    let _ = recv.stop(quinn::VarInt::from_u32(STOP_READ_TIMEOUT));
    NetError::ReadTimeout(after)
}

async fn read_header_untimed(recv: &mut RecvStream) -> Result<(u8, u32), NetError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    Ok((header[0], len))
}

async fn read_body_untimed(
    recv: &mut RecvStream,
    len: u32,
    max_len: usize,
) -> Result<Vec<u8>, NetError> {
    let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
    if len_usize > max_len {
        let _ = recv.stop(quinn::VarInt::from_u32(STOP_FRAME_TOO_LARGE));
        return Err(NetError::FrameTooLarge {
            len: u64::from(len),
            max: max_len,
        });
    }
    if len == 0 {
        return Err(NetError::Malformed("empty frame body".into()));
    }
    let mut body: Vec<u8> = Vec::with_capacity(len_usize.min(INITIAL_BODY_CAPACITY));
    while body.len() < len_usize {
        let want = len_usize - body.len();
        let chunk = match recv.read_chunk(want, true).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Err(quinn::ReadExactError::FinishedEarly(body.len()).into()),
            Err(e) => return Err(quinn::ReadExactError::ReadError(e).into()),
        };
        if body.capacity() - body.len() < chunk.bytes.len() {
            // Double, but never beyond the announced length.
            let target = body
                .capacity()
                .saturating_mul(2)
                .max(body.len() + chunk.bytes.len())
                .min(len_usize);
            body.reserve_exact(target - body.len());
        }
        body.extend_from_slice(&chunk.bytes);
    }
    Ok(body)
}

/// Decodes a body returned by [`read_frame_raw`].
pub fn decode_body<T: DeserializeOwned>(tag: u8, body: &[u8]) -> Result<T, NetError> {
    match body.split_first() {
        Some((&FRAME_VERSION, rest)) => postcard::from_bytes(rest)
            .map_err(|e| NetError::Malformed(format!("cannot decode message (tag {tag}): {e}"))),
        Some((v, _)) => Err(NetError::UnsupportedVersion(*v)),
        None => Err(NetError::Malformed("empty frame body".into())),
    }
}

/// Writes a response frame (same tag as the request) and finishes the stream.
pub async fn respond<T: Serialize + ?Sized>(
    send: &mut SendStream,
    tag: u8,
    msg: &T,
) -> Result<(), NetError> {
    write_frame(send, tag, msg).await?;
    send.finish()?;
    Ok(())
}

/// One request/response exchange on a fresh bi-stream: writes `req` under `tag`, finishes the
/// sending side, reads one response frame (at most `max_len` bytes) whose tag must equal
/// `tag`. The whole exchange is bounded by `timeout`.
pub async fn request<Req, Resp>(
    conn: &Connection,
    tag: u8,
    req: &Req,
    max_len: usize,
    timeout: Duration,
) -> Result<Resp, NetError>
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        write_frame(&mut send, tag, req).await?;
        send.finish()?;
        let (got, resp) = read_frame::<Resp>(&mut recv, max_len).await?;
        if got != tag {
            return Err(NetError::UnexpectedTag { expected: tag, got });
        }
        Ok(resp)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| NetError::RequestTimeout(timeout))?
}

/// Sends one unreliable datagram. Errors: [`NetError::DatagramTooLarge`] if it exceeds the
/// connection's current limit (at least [`MAX_DATAGRAM`] once established), or
/// [`NetError::Datagram`] (unsupported by peer, disabled, connection lost).
pub fn send_datagram(conn: &Connection, data: Bytes) -> Result<(), NetError> {
    if let Some(max) = conn.max_datagram_size()
        && data.len() > max
    {
        return Err(NetError::DatagramTooLarge {
            len: data.len(),
            max,
        });
    }
    let len = data.len();
    conn.send_datagram(data).map_err(|e| match e {
        quinn::SendDatagramError::TooLarge => NetError::DatagramTooLarge {
            len,
            max: conn.max_datagram_size().unwrap_or(0),
        },
        other => NetError::Datagram(other),
    })
}

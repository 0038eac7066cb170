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
/// bytes minus overheads). Keep foca's `max_packet_size` ≤ 1100 (trap T2).
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

/// Reads one frame written by [`write_frame`], returning its tag and message. A body longer
/// than `max_len` bytes is refused before anything is allocated; an unknown version or an
/// undecodable body is an error. Trailing bytes after the message are ignored (so messages can
/// grow by appending fields).
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max_len: usize,
) -> Result<(u8, T), NetError> {
    let (tag, body) = read_frame_raw(recv, max_len).await?;
    Ok((tag, decode_body(tag, &body)?))
}

/// Reads one frame without decoding its message: the tag and the body (version byte
/// included), for servers that choose the message type by tag. Same limits as
/// [`read_frame`].
pub async fn read_frame_raw(
    recv: &mut RecvStream,
    max_len: usize,
) -> Result<(u8, Vec<u8>), NetError> {
    let mut header = [0u8; 5];
    recv.read_exact(&mut header).await?;
    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
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
    let mut body = vec![0u8; len_usize];
    recv.read_exact(&mut body).await?;
    Ok((tag, body))
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

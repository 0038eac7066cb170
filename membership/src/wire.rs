//! Validation of received datagrams, done in full before anything reaches foca, so that a
//! malformed packet is refused without side effects.

use bytes::Buf;
use foca::{Header, Member, Message};

use crate::error::Error;
use crate::facts::Fact;
use crate::identity::{NodeId, NodeIdentity};
use crate::membership::{FRAME_FACTS, FRAME_MEMBERS};

fn malformed(what: impl std::fmt::Display) -> Error {
    Error::Malformed(what.to_string())
}

fn check_sender(src: &NodeIdentity, from: Option<NodeId>, me: &NodeIdentity) -> Result<(), Error> {
    if src.id.is_nil() {
        return Err(malformed("nil sender id"));
    }
    if let Some(peer) = from
        && peer != src.id
    {
        return Err(Error::SpoofedSender {
            claimed: src.id,
            peer,
        });
    }
    if src.id == me.id {
        return Err(Error::FromOurselves);
    }
    Ok(())
}

/// Validates a foca packet (the frame tag already stripped) the way foca will read it: header,
/// member updates, then length-prefixed custom broadcasts (facts).
pub(crate) fn validate_swim(
    body: &[u8],
    from: Option<NodeId>,
    me: &NodeIdentity,
) -> Result<Header<NodeIdentity>, Error> {
    let (header, mut data) =
        postcard::take_from_bytes::<Header<NodeIdentity>>(body).map_err(malformed)?;
    check_sender(&header.src, from, me)?;
    let about_me = match &header.message {
        Message::PingReq { target: other, .. }
        | Message::IndirectAck { target: other, .. }
        | Message::IndirectPing { origin: other, .. }
        | Message::ForwardedAck { origin: other, .. } => Some(other),
        _ => None,
    };
    if let Some(other) = about_me {
        if other.id.is_nil() {
            return Err(malformed("nil id in probe message"));
        }
        if other == me {
            return Err(malformed("indirect probe message about ourselves"));
        }
    }
    if header.dst.id.is_nil() && header.message != Message::Announce {
        return Err(malformed("nil destination outside of an announce"));
    }
    let remaining = data.len();
    if remaining == 1 || (header.message == Message::Announce && remaining > 0) {
        return Err(malformed("unexpected trailing bytes"));
    }
    if remaining >= 2 && header.message != Message::Broadcast {
        let count = data.get_u16();
        for _ in 0..count {
            let (member, rest) =
                postcard::take_from_bytes::<Member<NodeIdentity>>(data).map_err(malformed)?;
            if member.id().id.is_nil() {
                return Err(malformed("nil id in member update"));
            }
            data = rest;
        }
    }
    validate_fact_items(data)?;
    Ok(header)
}

/// Same rules as foca's custom broadcast reader: `u16` length + item, repeated.
fn validate_fact_items(mut data: &[u8]) -> Result<(), Error> {
    if !data.is_empty() && data.len() < 3 {
        return Err(malformed("truncated broadcast section"));
    }
    while data.len() > 2 {
        let len = usize::from(data.get_u16());
        if len == 0 || data.len() < len {
            return Err(malformed("bad broadcast item length"));
        }
        Fact::decode(&data[..len])?;
        data.advance(len);
    }
    if !data.is_empty() {
        return Err(malformed("trailing bytes after broadcasts"));
    }
    Ok(())
}

/// Decodes a fact push (tag stripped): `postcard(sender identity)`, then `u16` length + item
/// repeated (at least one). Facts about this node are dropped.
pub(crate) fn decode_fact_push(
    body: &[u8],
    from: Option<NodeId>,
    me: &NodeIdentity,
) -> Result<Vec<Fact>, Error> {
    let (sender, mut data) = postcard::take_from_bytes::<NodeIdentity>(body).map_err(malformed)?;
    check_sender(&sender, from, me)?;
    let mut items = Vec::new();
    if data.is_empty() {
        return Err(malformed("empty fact push"));
    }
    while !data.is_empty() {
        if data.len() < 3 {
            return Err(malformed("truncated fact push"));
        }
        let len = usize::from(data.get_u16());
        if len == 0 || data.len() < len {
            return Err(malformed("bad fact length"));
        }
        // Facts about us are only taken from ourselves: skipped.
        if let Some(fact) = Fact::decode(&data[..len])?
            && fact.origin != me.id
        {
            items.push(fact);
        }
        data.advance(len);
    }
    Ok(items)
}

/// Decodes a member sync (tag stripped): `postcard(sender identity)`, `u16` count, members.
/// Entries about this node are dropped.
pub(crate) fn decode_member_sync(
    body: &[u8],
    from: Option<NodeId>,
    me: &NodeIdentity,
) -> Result<Vec<Member<NodeIdentity>>, Error> {
    let (sender, mut data) = postcard::take_from_bytes::<NodeIdentity>(body).map_err(malformed)?;
    check_sender(&sender, from, me)?;
    if data.len() < 2 {
        return Err(malformed("truncated member sync"));
    }
    let count = data.get_u16();
    let mut members = Vec::with_capacity(usize::from(count).min(64));
    for _ in 0..count {
        let (member, rest) =
            postcard::take_from_bytes::<Member<NodeIdentity>>(data).map_err(malformed)?;
        if member.id().id.is_nil() {
            return Err(malformed("nil id in member sync"));
        }
        if member.id().id != me.id {
            members.push(member);
        }
        data = rest;
    }
    if !data.is_empty() {
        return Err(malformed("trailing bytes after member sync"));
    }
    Ok(members)
}

/// Encodes `members` into member-sync datagrams of at most `max` bytes.
pub(crate) fn encode_member_sync(
    me: &NodeIdentity,
    members: &[Member<NodeIdentity>],
    max: usize,
) -> Vec<bytes::Bytes> {
    let mut head = vec![FRAME_MEMBERS];
    if let Ok(id) = postcard::to_stdvec(me) {
        head.extend_from_slice(&id);
    }
    let mut frames = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    let flush = |body: &mut Vec<u8>, count: &mut u16, frames: &mut Vec<bytes::Bytes>| {
        if *count > 0 {
            let mut f = head.clone();
            f.extend_from_slice(&count.to_be_bytes());
            f.append(body);
            frames.push(bytes::Bytes::from(f));
            *count = 0;
        }
    };
    for m in members {
        let Ok(enc) = postcard::to_stdvec(m) else {
            continue;
        };
        if head.len() + 2 + body.len() + enc.len() > max {
            flush(&mut body, &mut count, &mut frames);
        }
        if head.len() + 2 + enc.len() > max {
            continue;
        }
        body.extend_from_slice(&enc);
        count += 1;
    }
    flush(&mut body, &mut count, &mut frames);
    frames
}

/// Encodes `items` (encoded facts) into as few fact-push datagrams of at most `max` bytes as
/// needed.
pub(crate) fn encode_fact_push(
    me: &NodeIdentity,
    items: &[Vec<u8>],
    max: usize,
) -> Vec<bytes::Bytes> {
    let mut head = vec![FRAME_FACTS];
    if let Ok(id) = postcard::to_stdvec(me) {
        head.extend_from_slice(&id);
    }
    let mut frames = Vec::new();
    let mut cur = head.clone();
    for item in items {
        let Ok(len) = u16::try_from(item.len()) else {
            continue;
        };
        if cur.len() + 2 + item.len() > max && cur.len() > head.len() {
            frames.push(bytes::Bytes::from(std::mem::replace(
                &mut cur,
                head.clone(),
            )));
        }
        if head.len() + 2 + item.len() > max {
            continue;
        }
        cur.extend_from_slice(&len.to_be_bytes());
        cur.extend_from_slice(item);
    }
    if cur.len() > head.len() {
        frames.push(bytes::Bytes::from(cur));
    }
    frames
}

//! The DNS wire format (RFC 1035), the part Shoal's resolver needs: a message's header, its
//! one question, the records of its sections (names with compression pointers on read),
//! EDNS0's OPT record (RFC 6891) for the asker's UDP size, and writing an answer. No I/O.
//!
//! Reading never panics and never loops: every offset is checked, a compression pointer must
//! point backwards (so a chain of them ends), a name is at most 255 bytes and a label 63.

use std::net::Ipv4Addr;

use thiserror::Error;

/// The fixed header's length.
pub const HEADER_LEN: usize = 12;
/// The largest reply on UDP without EDNS0.
pub const UDP_PLAIN_MAX: usize = 512;
/// The largest reply on UDP whatever the asker's EDNS0 size says (the DNS flag day 2020
/// value: no IP fragmentation on any usual path).
pub const UDP_EDNS_MAX: usize = 1232;
/// The largest message on TCP (its length prefix is 16 bits).
pub const TCP_MAX: usize = 65_535;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Record type SRV.
pub const TYPE_SRV: u16 = 33;
/// Record type OPT (EDNS0 pseudo-record).
pub const TYPE_OPT: u16 = 41;
/// Query type ANY.
pub const TYPE_ANY: u16 = 255;
/// Class IN.
pub const CLASS_IN: u16 = 1;
/// Query class ANY.
pub const CLASS_ANY: u16 = 255;

/// Response codes Shoal sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rcode {
    /// No error.
    NoError = 0,
    /// The query could not be parsed.
    FormErr = 1,
    /// The server failed (no upstream answered).
    ServFail = 2,
    /// The name does not exist.
    NxDomain = 3,
    /// The opcode is not supported.
    NotImp = 4,
}

/// Why bytes are not a DNS message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DnsError {
    /// Shorter than the header.
    #[error("shorter than a DNS header")]
    NoHeader,
    /// A section ends before its counts say.
    #[error("message truncated at byte {0}")]
    Truncated(usize),
    /// A name is malformed: a label over 63 bytes, over 255 in all, a reserved label type,
    /// or a compression pointer that does not point backwards.
    #[error("bad name at byte {0}")]
    BadName(usize),
}

/// The header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Query ID.
    pub id: u16,
    /// The flags word (QR, opcode, AA, TC, RD, RA, Z, RCODE).
    pub flags: u16,
    /// Number of questions.
    pub qdcount: u16,
    /// Number of answer records.
    pub ancount: u16,
    /// Number of authority records.
    pub nscount: u16,
    /// Number of additional records.
    pub arcount: u16,
}

impl Header {
    /// Reads the header (the first 12 bytes).
    ///
    /// # Errors
    /// [`DnsError::NoHeader`] when there are fewer.
    pub fn parse(bytes: &[u8]) -> Result<Self, DnsError> {
        let h = bytes.get(..HEADER_LEN).ok_or(DnsError::NoHeader)?;
        let word = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Ok(Self {
            id: word(0),
            flags: word(2),
            qdcount: word(4),
            ancount: word(6),
            nscount: word(8),
            arcount: word(10),
        })
    }

    /// A response (QR set)?
    #[must_use]
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    /// The opcode (0: QUERY).
    #[must_use]
    pub fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }

    /// Recursion desired?
    #[must_use]
    pub fn rd(&self) -> bool {
        self.flags & 0x0100 != 0
    }

    /// Truncated?
    #[must_use]
    pub fn tc(&self) -> bool {
        self.flags & 0x0200 != 0
    }

    /// Authoritative answer?
    #[must_use]
    pub fn aa(&self) -> bool {
        self.flags & 0x0400 != 0
    }

    /// The response code (the header's 4 bits).
    #[must_use]
    pub fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }
}

/// A question: its name's labels as received (case kept), type and class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The labels, without the root; empty for the root name.
    pub labels: Vec<Vec<u8>>,
    /// QTYPE.
    pub qtype: u16,
    /// QCLASS.
    pub qclass: u16,
}

impl Question {
    /// The name in lowercase ASCII, labels joined by dots, no trailing dot; bytes that are not
    /// printable ASCII are `\DDD` escapes, so two different names never read alike.
    #[must_use]
    pub fn name_lower(&self) -> String {
        let mut s = String::new();
        for (i, label) in self.labels.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            for &b in label {
                match b {
                    b'.' | b'\\' => {
                        s.push('\\');
                        s.push(char::from(b));
                    }
                    0x21..=0x7e => s.push(char::from(b.to_ascii_lowercase())),
                    _ => s.push_str(&format!("\\{b:03}")),
                }
            }
        }
        s
    }
}

/// A resource record as read: owner name (lowercase, as [`Question::name_lower`]), type,
/// class, TTL and its data (not decompressed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Owner name.
    pub name: String,
    /// TYPE.
    pub rtype: u16,
    /// CLASS (for OPT: the sender's UDP payload size).
    pub class: u16,
    /// TTL (for OPT: extended RCODE and flags).
    pub ttl: u32,
    /// RDATA.
    pub data: Vec<u8>,
}

impl Record {
    /// The address of an A record.
    #[must_use]
    pub fn a(&self) -> Option<Ipv4Addr> {
        (self.rtype == TYPE_A)
            .then(|| <[u8; 4]>::try_from(self.data.as_slice()).ok())
            .flatten()
            .map(Ipv4Addr::from)
    }
}

/// A whole message as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its header.
    pub header: Header,
    /// Its questions.
    pub questions: Vec<Question>,
    /// Answer records.
    pub answers: Vec<Record>,
    /// Authority records.
    pub authority: Vec<Record>,
    /// Additional records (with the OPT record, if any).
    pub additional: Vec<Record>,
}

impl Message {
    /// Reads a message: the header, then every section its counts announce. Bytes after the
    /// last record are ignored.
    ///
    /// # Errors
    /// [`DnsError`] for anything malformed.
    pub fn parse(bytes: &[u8]) -> Result<Self, DnsError> {
        let header = Header::parse(bytes)?;
        let mut at = HEADER_LEN;
        let mut questions = Vec::new();
        for _ in 0..header.qdcount {
            let (labels, next) = read_name(bytes, at)?;
            let fixed = bytes.get(next..next + 4).ok_or(DnsError::Truncated(next))?;
            questions.push(Question {
                labels,
                qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
                qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
            });
            at = next + 4;
        }
        let section = |count: u16, at: &mut usize| -> Result<Vec<Record>, DnsError> {
            // Each record is at least 11 bytes: never reserve more than the bytes could hold.
            let mut records = Vec::with_capacity(usize::from(count).min(bytes.len() / 11));
            for _ in 0..count {
                let (labels, next) = read_name(bytes, *at)?;
                let fixed = bytes
                    .get(next..next + 10)
                    .ok_or(DnsError::Truncated(next))?;
                let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
                let data_at = next + 10;
                let data = bytes
                    .get(data_at..data_at + len)
                    .ok_or(DnsError::Truncated(data_at))?;
                records.push(Record {
                    name: Question {
                        labels,
                        qtype: 0,
                        qclass: 0,
                    }
                    .name_lower(),
                    rtype: u16::from_be_bytes([fixed[0], fixed[1]]),
                    class: u16::from_be_bytes([fixed[2], fixed[3]]),
                    ttl: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
                    data: data.to_vec(),
                });
                *at = data_at + len;
            }
            Ok(records)
        };
        let answers = section(header.ancount, &mut at)?;
        let authority = section(header.nscount, &mut at)?;
        let additional = section(header.arcount, &mut at)?;
        Ok(Self {
            header,
            questions,
            answers,
            authority,
            additional,
        })
    }

    /// The asker's EDNS0 UDP payload size, if it sent an OPT record.
    #[must_use]
    pub fn edns_size(&self) -> Option<u16> {
        self.additional
            .iter()
            .find(|r| r.rtype == TYPE_OPT && r.name.is_empty())
            .map(|r| r.class)
    }
}

impl Question {
    /// The question's bytes as written in a reply: the name uncompressed (a pointer copied
    /// from the query would point into the reply's own header), type and class.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(self.labels.iter().map(|l| l.len() + 1).sum::<usize>() + 5);
        for label in &self.labels {
            // Parsing bounds a label to 63 bytes.
            out.push(u8::try_from(label.len()).unwrap_or(63));
            out.extend_from_slice(label);
        }
        out.push(0);
        out.extend_from_slice(&self.qtype.to_be_bytes());
        out.extend_from_slice(&self.qclass.to_be_bytes());
        out
    }
}

/// Reads a name at `at`: its labels and the offset after it (after the first pointer, when
/// it is compressed).
fn read_name(bytes: &[u8], mut at: usize) -> Result<(Vec<Vec<u8>>, usize), DnsError> {
    let mut labels = Vec::new();
    let mut total = 0usize;
    let mut end = None;
    // Pointers must go strictly backwards, so the walk ends; this bounds it besides.
    let mut limit = at;
    loop {
        let len = *bytes.get(at).ok_or(DnsError::Truncated(at))?;
        match len & 0xc0 {
            0x00 => {
                if len == 0 {
                    return Ok((labels, end.unwrap_or(at + 1)));
                }
                let len = usize::from(len);
                let label = bytes
                    .get(at + 1..at + 1 + len)
                    .ok_or(DnsError::Truncated(at + 1))?;
                total += len + 1;
                if total > 254 {
                    return Err(DnsError::BadName(at));
                }
                labels.push(label.to_vec());
                at += 1 + len;
            }
            0xc0 => {
                let low = *bytes.get(at + 1).ok_or(DnsError::Truncated(at + 1))?;
                let target = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                if target >= limit {
                    return Err(DnsError::BadName(at));
                }
                if end.is_none() {
                    end = Some(at + 2);
                }
                limit = target;
                at = target;
            }
            _ => return Err(DnsError::BadName(at)),
        }
    }
}

/// Writes a reply to a query: its ID, RD and question copied, QR and RA set, AA when
/// `authoritative`, the rcode, and the A `answers` that fit in `max` bytes (TC set when some
/// did not), each with the question's name (a pointer to it) and `ttl`. With `edns`, an OPT
/// record offering [`UDP_EDNS_MAX`] ends the message.
#[derive(Debug, Clone)]
pub struct Reply<'a> {
    /// The query's header.
    pub query: Header,
    /// The question as [`Question::encode`] writes it, or none: a reply with no question
    /// (FORMERR, NOTIMP).
    pub question: Option<&'a [u8]>,
    /// The response code.
    pub rcode: Rcode,
    /// The AA flag.
    pub authoritative: bool,
    /// RA: this server recurses (forwards) for other names.
    pub recursion_available: bool,
    /// A records for the question's name.
    pub answers: &'a [Ipv4Addr],
    /// Their TTL.
    pub ttl: u32,
    /// Answer with an OPT record (the query had one).
    pub edns: bool,
    /// The largest reply allowed.
    pub max: usize,
}

impl<'a> Reply<'a> {
    /// A reply with no answer and only `rcode` to say (errors, SERVFAIL), to `query` with
    /// `question` echoed when there is one: not authoritative, recursion available, a plain
    /// UDP size.
    #[must_use]
    pub fn bare(query: Header, question: Option<&'a [u8]>, rcode: Rcode) -> Reply<'a> {
        Reply {
            query,
            question,
            rcode,
            authoritative: false,
            recursion_available: true,
            answers: &[],
            ttl: 0,
            edns: false,
            max: UDP_PLAIN_MAX,
        }
    }

    /// The reply's bytes; never longer than `max` (at least the header and question, which a
    /// query that fit in a packet always allows: a longer one is answered without them).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        const A_LEN: usize = 2 + 2 + 2 + 4 + 2 + 4;
        const OPT_LEN: usize = 1 + 2 + 2 + 4 + 2;
        let mut question = self.question.unwrap_or(&[]);
        let opt = if self.edns { OPT_LEN } else { 0 };
        if HEADER_LEN + question.len() + opt > self.max {
            question = &[];
        }
        let qdcount = u16::from(!question.is_empty());
        let room = self
            .max
            .saturating_sub(HEADER_LEN + question.len() + opt)
            .checked_div(A_LEN)
            .unwrap_or(0);
        // A pointer to the question's name needs the question at offset 12, under 0x3fff.
        let fits = if qdcount == 1 {
            self.answers.len().min(room).min(usize::from(u16::MAX))
        } else {
            0
        };
        let truncated = fits < self.answers.len();
        let mut flags = 0x8000 | (self.query.flags & 0x0100) | u16::from(self.rcode as u8);
        if self.authoritative {
            flags |= 0x0400;
        }
        if truncated {
            flags |= 0x0200;
        }
        if self.recursion_available {
            flags |= 0x0080;
        }
        let mut out = Vec::with_capacity(HEADER_LEN + question.len() + fits * A_LEN + opt);
        out.extend_from_slice(&self.query.id.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&qdcount.to_be_bytes());
        out.extend_from_slice(&u16::try_from(fits).unwrap_or(u16::MAX).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&u16::from(self.edns).to_be_bytes());
        out.extend_from_slice(question);
        for ip in &self.answers[..fits] {
            out.extend_from_slice(&[0xc0, 0x0c]);
            out.extend_from_slice(&TYPE_A.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&self.ttl.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
        if self.edns {
            out.push(0);
            out.extend_from_slice(&TYPE_OPT.to_be_bytes());
            out.extend_from_slice(&u16::try_from(UDP_EDNS_MAX).unwrap_or(512).to_be_bytes());
            out.extend_from_slice(&0u32.to_be_bytes());
            out.extend_from_slice(&0u16.to_be_bytes());
        }
        out
    }
}

/// A query's bytes (tests, benchmarks and the fuzz corpus): one question, RD set, with an
/// OPT record offering `edns` bytes when given.
#[must_use]
pub fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&u16::from(edns.is_some()).to_be_bytes());
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        let bytes = label.as_bytes();
        out.push(u8::try_from(bytes.len().min(63)).unwrap_or(63));
        out.extend_from_slice(&bytes[..bytes.len().min(63)]);
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(size) = edns {
        out.push(0);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_reads_back() {
        let q = query(0x1234, "tasks.API.", TYPE_A, Some(4096));
        let m = Message::parse(&q).expect("parse");
        assert_eq!(m.header.id, 0x1234);
        assert!(m.header.rd() && !m.header.is_response());
        assert_eq!(m.questions.len(), 1);
        assert_eq!(m.questions[0].name_lower(), "tasks.api");
        assert_eq!(m.questions[0].labels[1], b"API");
        assert_eq!(m.edns_size(), Some(4096));
    }

    #[test]
    fn compressed_names_are_followed_backwards_only() {
        // A reply whose answer's name points at the question.
        let q = query(1, "api", TYPE_A, None);
        let m = Message::parse(&q).expect("q");
        let question = m.questions[0].encode();
        let bytes = Reply {
            query: m.header,
            question: Some(&question),
            rcode: Rcode::NoError,
            authoritative: true,
            recursion_available: true,
            answers: &[Ipv4Addr::new(10, 0, 0, 1)],
            ttl: 0,
            edns: false,
            max: UDP_PLAIN_MAX,
        }
        .encode();
        let r = Message::parse(&bytes).expect("reply");
        assert_eq!(r.answers[0].name, "api");
        assert_eq!(r.answers[0].a(), Some(Ipv4Addr::new(10, 0, 0, 1)));
        // A pointer to itself, and one forwards: refused, no loop.
        let mut looped = q.clone();
        looped.truncate(HEADER_LEN);
        looped.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert_eq!(Message::parse(&looped), Err(DnsError::BadName(12)));
        let mut forward = q[..HEADER_LEN].to_vec();
        forward.extend_from_slice(&[0xc0, 0x20, 0, 1, 0, 1]);
        assert!(Message::parse(&forward).is_err());
    }

    #[test]
    fn over_long_names_and_reserved_labels_are_refused() {
        let mut q = query(1, "a", TYPE_A, None);
        q.truncate(HEADER_LEN);
        for _ in 0..5 {
            q.push(63);
            q.extend_from_slice(&[b'x'; 63]);
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(matches!(Message::parse(&q), Err(DnsError::BadName(_))));
        let mut q = query(1, "a", TYPE_A, None);
        q[HEADER_LEN] = 0x41;
        assert!(matches!(Message::parse(&q), Err(DnsError::BadName(_))));
    }

    #[test]
    fn truncated_sections_are_errors() {
        let q = query(7, "example.com", TYPE_A, Some(1232));
        for cut in 0..q.len() {
            assert!(Message::parse(&q[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(Message::parse(&q[..5]), Err(DnsError::NoHeader));
    }

    #[test]
    fn a_reply_never_exceeds_its_limit() {
        let q = query(9, "tasks.api", TYPE_A, None);
        let m = Message::parse(&q).expect("q");
        let question = m.questions[0].encode();
        let ips: Vec<Ipv4Addr> = (0..200u8).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        for max in [0, 11, 12, 20, 40, 512, 1232, 65_535] {
            let bytes = Reply {
                query: m.header,
                question: Some(&question),
                rcode: Rcode::NoError,
                authoritative: true,
                recursion_available: true,
                answers: &ips,
                ttl: 0,
                edns: max >= 512,
                max,
            }
            .encode();
            assert!(
                bytes.len() <= max.max(HEADER_LEN),
                "{} > {max}",
                bytes.len()
            );
            let r = Message::parse(&bytes).expect("reply parses");
            assert_eq!(r.header.tc(), r.answers.len() < ips.len(), "max {max}");
        }
    }
}

//! A minimal, panic-free DER reader: just enough of X.509 to pull out the subject public key,
//! the validity period, the basic-constraints CA flag and the subject alternative names.

/// One DER element: its tag byte and contents.
#[derive(Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
    /// The whole encoding (tag, length and value).
    pub raw: &'a [u8],
}

/// Reads consecutive DER elements from a byte slice.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { rest: data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads the next element (single-byte tags, definite lengths up to 4 length bytes).
    pub(crate) fn next(&mut self) -> Result<Tlv<'a>, &'static str> {
        let data = self.rest;
        let tag = *data.first().ok_or("truncated DER")?;
        if tag & 0x1f == 0x1f {
            return Err("unsupported DER tag");
        }
        let first = *data.get(1).ok_or("truncated DER")?;
        let (len, header) = if first < 0x80 {
            (usize::from(first), 2usize)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err("unsupported DER length");
            }
            let bytes = data.get(2..2 + n).ok_or("truncated DER")?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, 2 + n)
        };
        let end = header.checked_add(len).ok_or("bad DER length")?;
        let value = data.get(header..end).ok_or("truncated DER")?;
        let raw = data.get(..end).ok_or("truncated DER")?;
        self.rest = data.get(end..).unwrap_or_default();
        Ok(Tlv { tag, value, raw })
    }

    /// Reads the next element and checks its tag.
    pub(crate) fn expect(&mut self, tag: u8) -> Result<Tlv<'a>, &'static str> {
        let tlv = self.next()?;
        if tlv.tag != tag {
            return Err("unexpected DER element");
        }
        Ok(tlv)
    }
}

pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BOOLEAN: u8 = 0x01;
pub(crate) const OID: u8 = 0x06;
pub(crate) const OCTET_STRING: u8 = 0x04;
pub(crate) const UTC_TIME: u8 = 0x17;
pub(crate) const GENERALIZED_TIME: u8 = 0x18;

/// Parses an X.509 `Time` (UTCTime or GeneralizedTime, `Z` form) to Unix seconds.
pub(crate) fn parse_time(tlv: Tlv<'_>) -> Result<i64, &'static str> {
    let s = tlv.value;
    let (year, rest) = match tlv.tag {
        UTC_TIME => {
            let yy = digits(s, 0, 2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..))
        }
        GENERALIZED_TIME => (digits(s, 0, 4)?, s.get(4..)),
        _ => return Err("bad time"),
    };
    let rest = rest.ok_or("bad time")?;
    if rest.len() != 11 || rest.last() != Some(&b'Z') {
        return Err("bad time");
    }
    let month = digits(rest, 0, 2)?;
    let day = digits(rest, 2, 2)?;
    let hour = digits(rest, 4, 2)?;
    let min = digits(rest, 6, 2)?;
    let sec = digits(rest, 8, 2)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return Err("bad time");
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + min * 60 + sec)
}

fn digits(s: &[u8], at: usize, n: usize) -> Result<i64, &'static str> {
    let part = s.get(at..at + n).ok_or("bad time")?;
    part.iter().try_fold(0i64, |acc, &b| {
        if b.is_ascii_digit() {
            Ok(acc * 10 + i64::from(b - b'0'))
        } else {
            Err("bad time")
        }
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

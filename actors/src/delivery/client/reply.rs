//! Replies and EHLO/LHLO capabilities as read from the peer: pure parsing, no I/O.
//!
//! A reply is one or more lines `ddd-text` ... `ddd text` (RFC 5321 §4.2). The
//! peer is not trusted: a line longer than [`MAX_LINE`] octets or a reply of
//! more than [`MAX_LINES`] lines is refused as garbage rather than buffered
//! without bound, and so is a line that does not start with a reply code or a
//! continuation line whose code differs from the first.

use mailflow_events::received::SmtpReply;

/// Longest reply line accepted, in octets including CRLF. RFC 5321 §4.5.3.1.5
/// allows 512; real servers send longer texts, so we allow eight times that.
pub const MAX_LINE: usize = 4096;

/// Most lines accepted in one reply (an EHLO reply has one per extension).
pub const MAX_LINES: usize = 128;

/// A reply line by line, before the enhanced status code is split off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// The three-digit code shared by every line.
    pub code: u16,
    /// The text of each line after `ddd-` / `ddd `, in order.
    pub lines: Vec<String>,
}

/// One parsed line: its code, whether it is the last line, and its text.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    /// Reply code.
    pub code: u16,
    /// `ddd ` (or just `ddd`): the reply ends here.
    pub last: bool,
    /// The text after the separator.
    pub text: String,
}

/// Parses one reply line (without its line ending).
pub fn parse_line(line: &[u8]) -> Result<Line, String> {
    let shown = || String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned();
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(format!("not a reply line: {:?}", shown()));
    }
    let code = u16::from(line[0] - b'0') * 100 + u16::from(line[1] - b'0') * 10 + u16::from(line[2] - b'0');
    if !(200..600).contains(&code) {
        return Err(format!("reply code out of range: {:?}", shown()));
    }
    let (last, rest) = match line.get(3) {
        None => (true, &line[3..3]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(format!("bad separator after the reply code: {:?}", shown())),
    };
    Ok(Line { code, last, text: String::from_utf8_lossy(rest).into_owned() })
}

/// Collects lines into a reply; `push` returns the reply once its last line came.
#[derive(Debug, Default)]
pub struct ReplyCollector {
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyCollector {
    /// Adds a line (without its line ending).
    pub fn push(&mut self, line: &[u8]) -> Result<Option<RawReply>, String> {
        let parsed = parse_line(line)?;
        match self.code {
            Some(code) if code != parsed.code => {
                return Err(format!("reply lines with different codes: {code} and {}", parsed.code));
            }
            _ => self.code = Some(parsed.code),
        }
        if self.lines.len() >= MAX_LINES {
            return Err(format!("reply longer than {MAX_LINES} lines"));
        }
        self.lines.push(parsed.text);
        if parsed.last {
            let lines = std::mem::take(&mut self.lines);
            let code = parsed.code;
            self.code = None;
            return Ok(Some(RawReply { code, lines }));
        }
        Ok(None)
    }
}

impl RawReply {
    /// The reply as recorded in events: the enhanced status code (RFC 3463) is
    /// taken from the first line when its class matches the reply code, and
    /// removed from every line that repeats it.
    pub fn to_reply(&self) -> SmtpReply {
        let enhanced = self.lines.first().and_then(|first| enhanced_code(first, self.code));
        let text = self
            .lines
            .iter()
            .map(|line| match &enhanced {
                Some(code) => line.strip_prefix(code.as_str()).map_or(line.as_str(), str::trim_start),
                None => line.as_str(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        SmtpReply { code: self.code, enhanced, text }
    }

    /// `2xx`.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// `4xx`.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// `5xx`.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
}

/// `x.y.z` at the start of `text` with `x` the class of `code` (2, 4 or 5),
/// `y` up to three digits and `z` up to three digits.
fn enhanced_code(text: &str, code: u16) -> Option<String> {
    let candidate = text.split(' ').next()?;
    let mut parts = candidate.split('.');
    let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let class_matches =
        class.len() == 1 && class.parse::<u16>().ok() == Some(code / 100) && matches!(class, "2" | "4" | "5");
    (parts.next().is_none() && class_matches && digits(subject) && digits(detail)).then(|| candidate.to_string())
}

/// The service extensions a peer announced in its EHLO/LHLO reply that the
/// client uses. A peer that only answered HELO has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `PIPELINING` (RFC 2920).
    pub pipelining: bool,
    /// `STARTTLS` (RFC 3207).
    pub starttls: bool,
    /// `SIZE` (RFC 1870): the peer's fixed limit in octets; `Some(0)` when it
    /// announced `SIZE` without a limit or with `0`.
    pub size: Option<u64>,
    /// `8BITMIME` (RFC 6152).
    pub eight_bit_mime: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `DSN` (RFC 3461).
    pub dsn: bool,
    /// `ENHANCEDSTATUSCODES` (RFC 2034).
    pub enhanced_status_codes: bool,
    /// `CHUNKING` (RFC 3030); recorded, not used (the client sends DATA).
    pub chunking: bool,
}

impl Capabilities {
    /// Reads the keywords of a positive EHLO/LHLO reply; the first line is the
    /// peer's greeting name and is skipped. Unknown keywords are ignored.
    pub fn from_ehlo(reply: &RawReply) -> Self {
        let mut caps = Self::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else { continue };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "STARTTLS" => caps.starttls = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "CHUNKING" => caps.chunking = true,
                _ => {}
            }
        }
        caps
    }

    /// The peer's size limit, when it declared one (a `SIZE` of 0 is no limit).
    pub fn size_limit(&self) -> Option<u64> {
        self.size.filter(|&n| n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(lines: &[&str]) -> Result<RawReply, String> {
        let mut collector = ReplyCollector::default();
        for line in lines {
            if let Some(reply) = collector.push(line.as_bytes())? {
                return Ok(reply);
            }
        }
        Err("incomplete".into())
    }

    #[test]
    fn a_multi_line_reply_keeps_its_lines_and_strips_the_repeated_enhanced_code() {
        let raw = collect(&["550-5.1.1 The email account does not exist.", "550 5.1.1 Try again"]).unwrap();
        let reply = raw.to_reply();
        assert_eq!(reply.code, 550);
        assert_eq!(reply.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(reply.text, "The email account does not exist.\nTry again");
    }

    #[test]
    fn an_enhanced_code_of_another_class_is_text() {
        let reply = collect(&["451 5.1.1 odd"]).unwrap().to_reply();
        assert_eq!((reply.code, reply.enhanced, reply.text.as_str()), (451, None, "5.1.1 odd"));
        let reply = collect(&["250 2.0.0"]).unwrap().to_reply();
        assert_eq!((reply.code, reply.enhanced.as_deref(), reply.text.as_str()), (250, Some("2.0.0"), ""));
    }

    #[test]
    fn a_bare_code_is_a_complete_reply() {
        let reply = collect(&["354"]).unwrap();
        assert_eq!(reply, RawReply { code: 354, lines: vec![String::new()] });
    }

    #[test]
    fn garbage_lines_are_refused() {
        for line in ["hello", "25", "2x0 ok", "250xok", "650 out of range", "150 preliminary"] {
            assert!(collect(&[line]).is_err(), "{line:?} was accepted");
        }
        assert!(collect(&["250-a", "251 b"]).is_err(), "mixed codes were accepted");
    }

    #[test]
    fn a_reply_with_too_many_lines_is_refused() {
        let mut collector = ReplyCollector::default();
        let mut result = Ok(None);
        for _ in 0..=MAX_LINES {
            result = collector.push(b"250-x");
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err());
    }

    #[test]
    fn ehlo_keywords_become_capabilities() {
        let raw = collect(&[
            "250-mx.example",
            "250-pipelining",
            "250-SIZE 10240000",
            "250-8BITMIME",
            "250-DSN",
            "250-STARTTLS",
            "250-ENHANCEDSTATUSCODES",
            "250-X-UNKNOWN foo",
            "250 SMTPUTF8",
        ])
        .unwrap();
        let caps = Capabilities::from_ehlo(&raw);
        assert!(caps.pipelining && caps.eight_bit_mime && caps.dsn && caps.starttls && caps.smtputf8);
        assert!(caps.enhanced_status_codes && !caps.chunking);
        assert_eq!(caps.size_limit(), Some(10_240_000));
        let unlimited = Capabilities::from_ehlo(&collect(&["250-mx", "250 SIZE"]).unwrap());
        assert_eq!((unlimited.size, unlimited.size_limit()), (Some(0), None));
    }
}

//! Every reply the SMTP front door sends, rendered in one place.
//!
//! Handlers return a [`Reply`]; nothing else in the server writes reply text.
//! Codes and texts follow the spec (`spec/eop-mailflow.md`): EOP's wording
//! where EOP documents one, RFC 5321/3463 otherwise.

use std::fmt::Write as _;

/// A reply to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `220` banner.
    Greeting { hostname: String },
    /// `250` to EHLO, with the extensions (one per line).
    Ehlo { hostname: String, client_ip: String, extensions: Vec<String> },
    /// `250` to HELO.
    Helo { hostname: String, client_ip: String },
    /// `250 2.1.0 Sender OK`.
    SenderOk,
    /// `250 2.1.5 Recipient OK`.
    RecipientOk,
    /// `354` to DATA.
    StartData,
    /// `250 2.0.0 OK <id> queued`: the message and its event are durable.
    Queued { id: String },
    /// `250 2.6.0` to an intermediate BDAT chunk.
    ChunkOk { size: usize },
    /// `250 2.0.0 OK` to RSET / NOOP.
    Ok,
    /// `221 2.0.0` to QUIT.
    Closing,
    /// `220 2.0.0 Ready to start TLS`.
    ReadyForTls,
    /// `235 2.7.0 Authentication successful`.
    AuthOk,
    /// `334 <challenge>` during AUTH.
    AuthChallenge(String),
    /// `252 2.1.5` to VRFY: never confirms or denies an address.
    CannotVerify,
    /// `214 2.0.0` to HELP.
    Help,
    /// `250 2.1.5 <address>` to VRFY, when enabled.
    Verified(String),
    /// `550 5.1.1` to VRFY of an address not in the directory, when enabled.
    UnknownUser,

    /// `421 4.7.0` too many sessions in all or from one address; closes.
    TooManyConnections,
    /// `421 4.7.0 Too many errors`; closes.
    TooManyErrors,
    /// `421 4.4.2` timeout; closes.
    Timeout,
    /// `421 4.3.2` shutting down; closes.
    ShuttingDown,
    /// `450 4.7.25`: anonymous IPv6 sender without a PTR record (spec 3.2a).
    Ipv6NoPtr { ip: String },
    /// `450 4.7.26`: anonymous IPv6 message passing neither SPF nor DKIM (spec 3.2b).
    Ipv6AuthFailed { ip: String },
    /// `451 4.3.0`: the event log failed; the client should retry.
    LogUnavailable,
    /// `452 4.3.1`: the event log's disk is full.
    InsufficientStorage,
    /// `452 4.5.3 Too many recipients` (spec 3.6).
    TooManyRecipients,
    /// `454 4.7.0 TLS not available`.
    TlsUnavailable,

    /// `500 5.5.2 Line too long`.
    LineTooLong,
    /// `500 5.5.1` unrecognised command.
    UnknownCommand,
    /// `501 5.5.4` bad syntax or parameter (text says which).
    SyntaxError(String),
    /// `501 5.1.7` bad sender address.
    BadSender,
    /// `501 5.1.3` bad recipient address.
    BadRecipient,
    /// `502 5.5.1` command not implemented here.
    NotImplemented,
    /// `503 5.5.1` command out of sequence (text says what is expected).
    BadSequence(&'static str),
    /// `504 5.5.4` parameter not supported.
    UnsupportedParameter(String),
    /// `530 5.7.0 Must issue a STARTTLS command first`.
    TlsRequired,
    /// `530 5.7.57` anonymous MAIL on the submission listener (spec 5.1).
    AuthRequired,
    /// `535 5.7.3 Authentication unsuccessful` (spec 5.1).
    AuthFailed,
    /// `550 5.7.60`: the authenticated user may not send as this sender (spec 5.1).
    SendAsDenied,
    /// `550 5.2.1`: the domain does not accept anonymous mail over IPv6 (spec 3.2).
    Ipv6NotAccepted { domain: String },
    /// `550 5.4.1 Recipient address rejected: Access denied` (DBEB, spec 2.4).
    AccessDenied,
    /// `550 5.4.1 Relay Access Denied`: anonymous, no connector, recipient not ours (spec 4.8).
    RelayDenied,
    /// `550 5.7.51`: a restricting partner connector refused the source (spec 4.3).
    PartnerRestricted,
    /// `550 5.7.509`: DMARC failed and the domain's policy is reject (spec 10, honoured).
    DmarcReject { domain: String },
    /// `550 5.7.68`: direct send of one of our domains from no connector (spec 3.9).
    DirectSendRejected,
    /// `550 5.7.64 TenantAttribution; Relay Access Denied` (spec 4.7/4.8).
    TenantAttribution,
    /// `550 5.6.11 Invalid characters`: bare CR or LF, or NUL (spec 17.4; SMTP smuggling).
    InvalidCharacters,
    /// `550 5.6.0`: the content's first line is a continuation line (starts
    /// with a space or tab), which would fold into our `Received:` field.
    FoldedFirstLine,
    /// `552 5.3.4 Message size exceeds fixed maximum message size`.
    MessageTooLarge,
    /// `552 5.3.4 Message header size or field count exceeds limit` (header bombs).
    HeaderTooLarge,
    /// `553 5.6.7`: a non-ASCII address from a client that did not declare
    /// SMTPUTF8 (RFC 6531; Postfix's wording).
    SmtpUtf8Required,
    /// `554 5.4.14 Hop count exceeded - possible mail loop`.
    HopCountExceeded,
    /// `554 5.5.0 Error: SMTP protocol synchronization`; closes (RFC 2920 violation).
    SynchronizationError,
}

impl Reply {
    /// The three-digit code.
    pub fn code(&self) -> u16 {
        use Reply::*;
        match self {
            Greeting { .. } | ReadyForTls => 220,
            Closing => 221,
            Help => 214,
            AuthOk => 235,
            Ehlo { .. } | Helo { .. } | SenderOk | RecipientOk | Queued { .. } | ChunkOk { .. } | Ok => 250,
            CannotVerify => 252,
            Verified(_) => 250,
            UnknownUser => 550,
            AuthChallenge(_) => 334,
            StartData => 354,
            TooManyConnections | TooManyErrors | Timeout | ShuttingDown => 421,
            Ipv6NoPtr { .. } | Ipv6AuthFailed { .. } => 450,
            LogUnavailable => 451,
            InsufficientStorage | TooManyRecipients => 452,
            TlsUnavailable => 454,
            LineTooLong | UnknownCommand => 500,
            SyntaxError(_) | BadSender | BadRecipient => 501,
            NotImplemented => 502,
            BadSequence(_) => 503,
            UnsupportedParameter(_) => 504,
            TlsRequired | AuthRequired => 530,
            AuthFailed => 535,
            SendAsDenied | DirectSendRejected | DmarcReject { .. } => 550,
            Ipv6NotAccepted { .. }
            | AccessDenied
            | RelayDenied
            | PartnerRestricted
            | TenantAttribution
            | InvalidCharacters
            | FoldedFirstLine => 550,
            MessageTooLarge | HeaderTooLarge => 552,
            SmtpUtf8Required => 553,
            HopCountExceeded | SynchronizationError => 554,
        }
    }

    /// The enhanced status code (RFC 3463), when the reply has one.
    pub fn enhanced(&self) -> Option<&'static str> {
        use Reply::*;
        Some(match self {
            Greeting { .. } | Ehlo { .. } | Helo { .. } | AuthChallenge(_) | StartData => return None,
            SenderOk => "2.1.0",
            RecipientOk | CannotVerify | Verified(_) => "2.1.5",
            UnknownUser => "5.1.1",
            Queued { .. } | Ok | Closing | ReadyForTls | Help => "2.0.0",
            ChunkOk { .. } => "2.6.0",
            AuthOk => "2.7.0",
            TooManyConnections | TooManyErrors | TlsUnavailable => "4.7.0",
            Timeout => "4.4.2",
            ShuttingDown => "4.3.2",
            Ipv6NoPtr { .. } => "4.7.25",
            Ipv6AuthFailed { .. } => "4.7.26",
            LogUnavailable => "4.3.0",
            InsufficientStorage => "4.3.1",
            TooManyRecipients => "4.5.3",
            LineTooLong => "5.5.2",
            UnknownCommand | NotImplemented | BadSequence(_) => "5.5.1",
            SyntaxError(_) | UnsupportedParameter(_) => "5.5.4",
            BadSender => "5.1.7",
            BadRecipient => "5.1.3",
            TlsRequired => "5.7.0",
            AuthRequired => "5.7.57",
            AuthFailed => "5.7.3",
            SendAsDenied => "5.7.60",
            Ipv6NotAccepted { .. } => "5.2.1",
            AccessDenied | RelayDenied => "5.4.1",
            PartnerRestricted => "5.7.51",
            TenantAttribution => "5.7.64",
            DirectSendRejected => "5.7.68",
            DmarcReject { .. } => "5.7.509",
            InvalidCharacters => "5.6.11",
            FoldedFirstLine => "5.6.0",
            MessageTooLarge | HeaderTooLarge => "5.3.4",
            SmtpUtf8Required => "5.6.7",
            HopCountExceeded => "5.4.14",
            SynchronizationError => "5.5.0",
        })
    }

    /// The human-readable text after the codes.
    pub fn text(&self) -> String {
        use Reply::*;
        match self {
            Greeting { hostname } => format!("{hostname} mailflow ESMTP ready"),
            Ehlo { hostname, client_ip, .. } | Helo { hostname, client_ip } => format!("{hostname} Hello [{client_ip}]"),
            SenderOk => "Sender OK".into(),
            RecipientOk => "Recipient OK".into(),
            StartData => "Start mail input; end with <CRLF>.<CRLF>".into(),
            Queued { id } => format!("OK <{id}> queued"),
            ChunkOk { size } => format!("{size} octets received"),
            Ok => "OK".into(),
            Closing => "Service closing transmission channel".into(),
            ReadyForTls => "Ready to start TLS".into(),
            AuthOk => "Authentication successful".into(),
            AuthChallenge(challenge) => challenge.clone(),
            CannotVerify => "Cannot VRFY user, but will accept message and attempt delivery".into(),
            Verified(address) => format!("<{address}>"),
            UnknownUser => "User unknown".into(),
            Help => "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH".into(),
            TooManyConnections => "Too many connections, try again later".into(),
            TooManyErrors => "Too many errors, closing connection".into(),
            Timeout => "Timeout, closing connection".into(),
            ShuttingDown => "Service shutting down, try again later".into(),
            Ipv6NoPtr { ip } => format!("Service unavailable, sending IPv6 address [{ip}] must have reverse DNS record."),
            Ipv6AuthFailed { ip } => {
                format!("Service unavailable, message sent over IPv6 [{ip}] must pass either SPF or DKIM validation.")
            }
            LogUnavailable => "Temporary failure storing the message, try again later".into(),
            InsufficientStorage => "Insufficient system storage, try again later".into(),
            TooManyRecipients => "Too many recipients".into(),
            TlsUnavailable => "TLS not available".into(),
            LineTooLong => "Line too long".into(),
            UnknownCommand => "Command unrecognized".into(),
            SyntaxError(what) => format!("Syntax error: {what}"),
            BadSender => "Bad sender address syntax".into(),
            BadRecipient => "Bad recipient address syntax".into(),
            NotImplemented => "Command not implemented".into(),
            BadSequence(expected) => format!("Bad sequence of commands: {expected}"),
            UnsupportedParameter(param) => format!("Parameter not supported: {param}"),
            TlsRequired => "Must issue a STARTTLS command first".into(),
            AuthRequired => "Client was not authenticated to send anonymous mail during MAIL FROM".into(),
            AuthFailed => "Authentication unsuccessful".into(),
            SendAsDenied => "SMTP; Client does not have permissions to send as this sender".into(),
            Ipv6NotAccepted { domain } => format!("Service unavailable, [{domain}] does not accept email over IPv6."),
            AccessDenied => "Recipient address rejected: Access denied".into(),
            RelayDenied => "Relay Access Denied".into(),
            PartnerRestricted => "TenantInboundAttribution; There is a partner connector configured that matched the message's sender domain. The connector had either the RestrictDomainsToIPAddresses or RequireTls set".into(),
            TenantAttribution => "TenantAttribution; Relay Access Denied".into(),
            DmarcReject { domain } => format!(
                "Access denied, sending domain [{domain}] does not pass DMARC verification and has a DMARC policy of reject."
            ),
            DirectSendRejected => {
                "TenantInboundAttribution; Direct Send not allowed for this organization from unauthorized sources".into()
            }
            InvalidCharacters => "Invalid characters: bare CR or LF, or NUL, in the message".into(),
            FoldedFirstLine => "Message header section begins with a continuation line".into(),
            MessageTooLarge => "Message size exceeds fixed maximum message size".into(),
            HeaderTooLarge => "Message header size or field count exceeds limit".into(),
            SmtpUtf8Required => "Must declare SMTPUTF8 to send unicode address".into(),
            HopCountExceeded => "Hop count exceeded - possible mail loop".into(),
            SynchronizationError => "Error: SMTP protocol synchronization".into(),
        }
    }

    /// Whether the server closes the connection after sending this reply.
    pub fn closes(&self) -> bool {
        matches!(
            self,
            Reply::Closing
                | Reply::TooManyConnections
                | Reply::TooManyErrors
                | Reply::Timeout
                | Reply::ShuttingDown
                | Reply::SynchronizationError
        )
    }

    /// Whether the reply counts as a client error toward `max_errors`.
    pub fn is_client_error(&self) -> bool {
        matches!(self.code(), 500..=504)
    }

    /// The reply on the wire, CRLF-terminated, multi-line for EHLO.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let code = self.code();
        if let Reply::Ehlo { extensions, .. } = self {
            let _ = write!(out, "{code}-{}\r\n", self.text());
            for (i, extension) in extensions.iter().enumerate() {
                let separator = if i + 1 == extensions.len() { ' ' } else { '-' };
                let _ = write!(out, "{code}{separator}{extension}\r\n");
            }
            if extensions.is_empty() {
                out = format!("{code} {}\r\n", self.text());
            }
            return out;
        }
        match self.enhanced() {
            Some(enhanced) => {
                let _ = write!(out, "{code} {enhanced} {}\r\n", self.text());
            }
            None => {
                let _ = write!(out, "{code} {}\r\n", self.text());
            }
        }
        out
    }

    /// The reply as recorded in events.
    pub fn to_event(&self) -> mailflow_events::received::SmtpReply {
        mailflow_events::received::SmtpReply {
            code: self.code(),
            enhanced: self.enhanced().map(str::to_string),
            text: self.text(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eop_replies_render_with_the_spec_codes() {
        assert_eq!(Reply::AccessDenied.render(), "550 5.4.1 Recipient address rejected: Access denied\r\n");
        assert_eq!(Reply::TenantAttribution.render(), "550 5.7.64 TenantAttribution; Relay Access Denied\r\n");
        assert_eq!(
            Reply::Ipv6NotAccepted { domain: "contoso.com".into() }.render(),
            "550 5.2.1 Service unavailable, [contoso.com] does not accept email over IPv6.\r\n"
        );
        assert!(Reply::Ipv6NoPtr { ip: "2001:db8::1".into() }.render().starts_with("450 4.7.25 "));
        assert!(Reply::Ipv6AuthFailed { ip: "2001:db8::1".into() }.render().starts_with("450 4.7.26 "));
        assert!(Reply::TooManyRecipients.render().starts_with("452 4.5.3 "));
        assert!(Reply::MessageTooLarge.render().starts_with("552 5.3.4 "));
        assert!(Reply::HopCountExceeded.render().starts_with("554 5.4.14 "));
    }

    #[test]
    fn ehlo_is_multiline_with_a_final_space_separator() {
        let reply = Reply::Ehlo {
            hostname: "mx".into(),
            client_ip: "127.0.0.1".into(),
            extensions: vec!["PIPELINING".into(), "SIZE 100".into()],
        };
        assert_eq!(reply.render(), "250-mx Hello [127.0.0.1]\r\n250-PIPELINING\r\n250 SIZE 100\r\n");
    }
}

//! ArcSight CEF over RFC 5424 syslog, with UDP (one datagram) and TCP (RFC 6587 octet
//! counting) transports.

use super::cloudevents::rfc3339_ms;
use super::slack::{event_name, summary, title};
use super::Alert;
use crate::vocab::{AuditEvent, Severity};
use std::io;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{lookup_host, TcpStream, UdpSocket};

/// Longest UDP message: RFC 5424 requires receivers to take 480 bytes and should take 2048;
/// longer datagrams are commonly cut or dropped.
pub const MAX_UDP: usize = 2048;
/// Bound on a TCP connect, so an unreachable collector fails the send instead of hanging.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// CEF severity (0-10; ArcSight reads 7-8 as High and 9-10 as Very-High).
pub fn cef_severity(s: Severity) -> u8 {
    match s {
        Severity::Low => 3,
        Severity::Medium => 5,
        Severity::High => 8,
        Severity::Critical => 10,
    }
}

/// Syslog severity (RFC 5424 table 2) of an alert severity: critical 2, error 3, warning 4,
/// notice 5, the same steps as the PagerDuty mapping.
pub fn syslog_severity(s: Severity) -> u8 {
    match s {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
    }
}

/// CEF escaping. Header fields: backslash and pipe; a line break would end the record, so it
/// becomes a space (the spec allows line breaks only in extension values). Extension values
/// (`ext`): backslash, equals sign, and line breaks as `\n` and `\r`; pipes pass.
fn escape(s: &str, ext: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match (c, ext) {
            ('\\', _) => out.push_str("\\\\"),
            ('|', false) => out.push_str("\\|"),
            ('\r' | '\n', false) => out.push(' '),
            ('=', true) => out.push_str("\\="),
            ('\n', true) => out.push_str("\\n"),
            ('\r', true) => out.push_str("\\r"),
            (c, _) => out.push(c),
        }
    }
    out
}

/// The CEF:0 record of an alert event:
/// `CEF:0|probewatch|probewatch|<version>|<technique>:<kind>|<name>|<severity>|<extension>`.
/// Extension keys are CEF dictionary keys (`rt`, `start`, `end` in epoch ms); the custom
/// strings carry what the dictionary has no key for, labelled.
pub fn cef(a: &Alert, version: &str) -> String {
    let event = event_name(a.event);
    let signature = format!("{}:{}", a.technique.id, a.kind.as_str());
    let name = format!("{} {event}", title(a.kind));
    let evidence = serde_json::to_string(&a.evidence).unwrap_or_default();
    let confidence = if a.confidence.is_finite() {
        a.confidence
    } else {
        0.0
    };
    let ext: Vec<(&str, String)> = vec![
        ("rt", a.ts_ms.to_string()),
        ("act", event.into()),
        ("cat", a.kind.as_str().into()),
        ("suser", a.client.clone()),
        ("msg", summary(a)),
        ("cnt", a.queries.total.to_string()),
        ("start", a.first_seen_ms.to_string()),
        ("end", a.last_seen_ms.to_string()),
        ("externalId", a.event_id.clone()),
        ("cs1Label", "model".into()),
        ("cs1", a.model.clone()),
        ("cs2Label", "alertId".into()),
        ("cs2", a.id.clone()),
        ("cs3Label", "eventId".into()),
        ("cs3", a.event_id.clone()),
        ("cs4Label", "technique".into()),
        ("cs4", format!("{} {}", a.technique.id, a.technique.name)),
        ("cfp1Label", "confidence".into()),
        ("cfp1", format!("{confidence:.4}")),
        ("cn1Label", "windowQueries".into()),
        ("cn1", a.queries.window.to_string()),
        // Last: the longest value, so a datagram cut at MAX_UDP loses only (part of) it.
        ("cs5Label", "evidence".into()),
        ("cs5", evidence),
    ];
    let ext: Vec<String> = ext
        .iter()
        .map(|(k, v)| format!("{k}={}", escape(v, true)))
        .collect();
    format!(
        "CEF:0|probewatch|probewatch|{}|{}|{}|{}|{}",
        escape(version, false),
        escape(&signature, false),
        escape(&name, false),
        cef_severity(a.severity),
        ext.join(" "),
    )
}

/// A header field as RFC 5424 allows it: printable US-ASCII only (others become `_`), at most
/// `max` characters, NILVALUE `-` when empty.
fn header_field(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .take(max)
        .map(|c| if ('!'..='~').contains(&c) { c } else { '_' })
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// An RFC 5424 message `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`, PRI being
/// `facility * 8 + syslog_severity(severity)` (facility capped at 23, local7). PROCID is this
/// process's id (it tells a restart apart); MSGID and STRUCTURED-DATA are NILVALUE. MSG is
/// sent without a BOM: CEF parsers expect `CEF:0` first.
pub fn rfc5424(
    facility: u8,
    severity: &Severity,
    hostname: &str,
    app: &str,
    ts_ms: i64,
    msg: &str,
) -> String {
    let pri = u16::from(facility.min(23)) * 8 + u16::from(syslog_severity(*severity));
    // MSG is optional; without one the message ends at STRUCTURED-DATA, with no trailing SP.
    let sp = if msg.is_empty() { "" } else { " " };
    format!(
        "<{pri}>1 {} {} {} {} - -{sp}{msg}",
        rfc3339_ms(ts_ms),
        header_field(hostname, 255),
        header_field(app, 48),
        std::process::id(),
    )
}

/// RFC 6587 octet-counted frame: `LEN SP MSG`, LEN in bytes.
pub fn frame_tcp(msg: &str) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

#[derive(Debug)]
enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// A syslog connection to `udp://host:port` or `tcp://host:port`.
#[derive(Debug)]
pub struct SyslogTransport {
    addr: String,
    conn: Conn,
}

async fn tcp_connect(hostport: &str) -> io::Result<TcpStream> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(hostport))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "syslog TCP connect timed out"))??;
    // Alerts are small and rare: send each at once.
    s.set_nodelay(true)?;
    Ok(s)
}

impl SyslogTransport {
    /// Resolves and connects (UDP: binds an ephemeral port and fixes the peer).
    pub async fn connect(addr: &str) -> io::Result<Self> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("syslog address {addr:?}: want udp://host:port or tcp://host:port"),
            )
        };
        let conn = if let Some(hp) = addr.strip_prefix("udp://") {
            let peer = lookup_host(hp).await?.next().ok_or_else(bad)?;
            let local = if peer.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let sock = UdpSocket::bind(local).await?;
            sock.connect(peer).await?;
            Conn::Udp(sock)
        } else if let Some(hp) = addr.strip_prefix("tcp://") {
            Conn::Tcp(tcp_connect(hp).await?)
        } else {
            return Err(bad());
        };
        Ok(Self {
            addr: addr.to_string(),
            conn,
        })
    }

    /// Sends one message. UDP: one datagram, cut to [`MAX_UDP`] bytes on a character boundary.
    /// TCP: one octet-counted frame; a connection the collector closed is re-opened once.
    pub async fn send(&mut self, msg: &str) -> io::Result<()> {
        match &mut self.conn {
            Conn::Udp(sock) => {
                let mut end = msg.len().min(MAX_UDP);
                while !msg.is_char_boundary(end) {
                    end -= 1;
                }
                sock.send(&msg.as_bytes()[..end]).await.map(|_| ())
            }
            Conn::Tcp(stream) => {
                let frame = frame_tcp(msg);
                // A collector that closed the connection is only noticed on the second write
                // after the close (the first is accepted by the kernel, then lost): peek for
                // its FIN first so that message is not the one lost.
                let alive = !peer_closed(stream);
                if alive && stream.write_all(&frame).await.is_ok() {
                    return Ok(());
                }
                let hp = self.addr.trim_start_matches("tcp://");
                let mut fresh = tcp_connect(hp).await?;
                fresh.write_all(&frame).await?;
                *stream = fresh;
                Ok(())
            }
        }
    }
}

/// Whether the peer has closed (or reset) the connection, without blocking. A syslog
/// collector never sends, so readable means end of stream or an error.
fn peer_closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != io::ErrorKind::WouldBlock,
    }
}

/// Syslog facility of alert messages: 13, "log audit".
pub const FACILITY: u8 = 13;

/// Delivers CEF over RFC 5424 syslog, reconnecting as needed.
#[derive(Debug)]
pub struct SyslogSink {
    addr: String,
    hostname: String,
    timeout: Duration,
    conn: Option<SyslogTransport>,
}

impl SyslogSink {
    /// Builds the sink; it connects on first use.
    pub fn new(s: &crate::config::ResolvedSink, cfg: &crate::config::SyslogConfig) -> Self {
        Self {
            addr: cfg.address.clone(),
            hostname: std::env::var("HOSTNAME").unwrap_or_else(|_| "-".into()),
            timeout: Duration::from_millis(s.config.delivery.timeout_ms),
            conn: None,
        }
    }
}

impl SyslogSink {
    /// Sends one message, connecting first if needed; a failed connection is dropped so the
    /// next attempt reconnects.
    async fn send(&mut self, msg: &str) -> super::delivery::Outcome {
        use super::delivery::Outcome;
        let res = tokio::time::timeout(self.timeout, async {
            if self.conn.is_none() {
                self.conn = Some(SyslogTransport::connect(&self.addr).await?);
            }
            match self.conn.as_mut() {
                Some(c) => c.send(msg).await,
                None => Ok(()),
            }
        })
        .await;
        let reason = match res {
            Ok(Ok(())) => return Outcome::Delivered,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        self.conn = None;
        Outcome::Retry {
            after: None,
            reason,
        }
    }
}

impl super::delivery::Sink for SyslogSink {
    async fn deliver(&mut self, a: &Alert) -> super::delivery::Outcome {
        let msg = rfc5424(
            FACILITY,
            &a.severity,
            &self.hostname,
            "probewatch",
            a.emitted_at_ms,
            &cef(a, env!("CARGO_PKG_VERSION")),
        );
        self.send(&msg).await
    }

    async fn deliver_audit(&mut self, e: &AuditEvent) -> Option<super::delivery::Outcome> {
        // Notice (5): an operator's action is a normal but significant condition.
        let msg = rfc5424(
            FACILITY,
            &Severity::Low,
            &self.hostname,
            "probewatch",
            e.ts_ms,
            &audit_cef(e, env!("CARGO_PKG_VERSION")),
        );
        Some(self.send(&msg).await)
    }
}

/// The CEF:0 record of an operator's action (signature `audit:<act>`, CEF severity 3).
pub fn audit_cef(e: &AuditEvent, version: &str) -> String {
    let mut ext: Vec<(&str, String)> = vec![
        ("rt", e.ts_ms.to_string()),
        ("act", e.act.as_str().into()),
        ("cat", "audit".into()),
        ("suser", e.who.clone()),
        ("externalId", e.id.clone()),
    ];
    if let Some(c) = &e.client {
        ext.push(("duser", c.clone()));
    }
    if let Some(a) = &e.alert_id {
        ext.extend([("cs2Label", "alertId".into()), ("cs2", a.clone())]);
    }
    if let Some(k) = e.kind {
        ext.extend([("cs1Label", "kind".into()), ("cs1", k.as_str().into())]);
    }
    if let Some(u) = e.until_ms {
        ext.push(("end", u.to_string()));
    }
    ext.push(("msg", e.why.clone()));
    let ext: Vec<String> = ext
        .iter()
        .map(|(k, v)| format!("{k}={}", escape(v, true)))
        .collect();
    format!(
        "CEF:0|probewatch|probewatch|{}|audit:{}|Operator {}|3|{}",
        escape(version, false),
        e.act.as_str(),
        e.act.as_str().replace('_', " "),
        ext.join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Event;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    use tokio::net::TcpListener;

    const NASTY: &str = "a|b\\c=d\nx";

    #[test]
    fn cef_escapes_header_and_extension_differently() {
        assert_eq!(escape(NASTY, false), "a\\|b\\\\c=d x");
        assert_eq!(escape(NASTY, true), "a|b\\\\c\\=d\\nx");
        assert_eq!(escape("x\r\ny", true), "x\\r\\ny");
        let mut a = Alert::example("al-5");
        a.client = NASTY.into();
        let line = cef(&a, NASTY);
        assert!(!line.contains('\n'), "{line}");
        let head = "CEF:0|probewatch|probewatch|a\\|b\\\\c=d x|AML.T0024.002:extraction|";
        assert!(line.starts_with(head), "{line}");
        assert!(line.contains(" suser=a|b\\\\c\\=d\\nx "), "{line}");
    }

    #[test]
    fn cef_record_carries_the_alert() {
        let mut a = Alert::example("al-5");
        (a.event, a.event_id, a.severity) = (Event::Resolved, "al-5.2".into(), Severity::Critical);
        let want = concat!(
            "CEF:0|probewatch|probewatch|0.1.0|AML.T0024.002:extraction|Model extraction resolved|10|",
            "rt=1700000060000 act=resolved cat=extraction suser=c-17 ",
            "msg=Model extraction resolved: client c-17 on model digits-mlp (AML.T0024.002) ",
            "cnt=300 start=1700000000000 end=1700000060000 externalId=al-5.2 ",
            "cs1Label=model cs1=digits-mlp cs2Label=alertId cs2=al-5 cs3Label=eventId cs3=al-5.2 ",
            "cs4Label=technique cs4=AML.T0024.002 Exfiltration via ML Inference API: Extract ML Model ",
            "cfp1Label=confidence cfp1=0.9000 cn1Label=windowQueries cn1=120 cs5Label=evidence ",
            r#"cs5={"normal_out_of_range_share":0.01,"out_of_range_share":0.9}"#,
        );
        assert_eq!(cef(&a, "0.1.0"), want);
        let sev = [Severity::Low, Severity::Medium, Severity::High].map(cef_severity);
        assert_eq!(sev, [3, 5, 8]);
    }

    #[test]
    fn a_full_alert_fits_one_datagram() {
        // Every figure the pipeline emits, at full f64 precision (measured: about 1560 bytes).
        let f = 0.123_456_789_012_345_67;
        let mut a = Alert::example("01JBX0000000000000000000000");
        a.evidence = serde_json::json!({"window_queries": 1200, "low_margin_share": f,
            "normal_low_margin_share": f, "margin_threshold": f, "near_duplicate_share": f,
            "exact_repeat_share": f, "class_flips": 1200, "cross_account_near_duplicates": 1200,
            "out_of_range_share": f, "normal_out_of_range_share": f, "prada_w": f,
            "structured_perturbation_share": f, "normal_structured_share": f, "threshold": f,
            "invalid_inputs": 1200, "last_out_of_range_features": 784, "prada_alarm": true,
            "distinct_cells": 1200.0, "queries_per_minute": f,
            "cusum": {"low_margin": f, "out_of_range": f, "structured": f, "invalid": f}});
        let m = rfc5424(
            20,
            &Severity::High,
            "probewatch-7f9c",
            "probewatch",
            0,
            &cef(&a, "1"),
        );
        assert!(m.len() < MAX_UDP, "{}", m.len());
    }

    #[test]
    fn rfc5424_header() {
        let (lo, mid, hi, crit) = (
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        );
        let pid = std::process::id();
        // local4 (20) * 8 + error (3) = 163; the space in the hostname is not printable ASCII.
        let m = rfc5424(
            20,
            &hi,
            "host 1.example",
            "probewatch",
            1_700_000_060_123,
            "CEF:0|x",
        );
        let want =
            format!("<163>1 2023-11-14T22:14:20.123Z host_1.example probewatch {pid} - - CEF:0|x");
        assert_eq!(m, want);
        let m = rfc5424(1, &crit, "h", "a", 0, "m");
        assert!(m.starts_with("<10>1 1970-01-01T00:00:00.000Z h a "), "{m}");
        let m = rfc5424(16, &lo, "", "ünï", 0, "m");
        assert!(
            m.starts_with("<133>1 1970-01-01T00:00:00.000Z - _n_ "),
            "{m}"
        );
        assert!(rfc5424(99, &mid, "h", "a", 0, "m").starts_with("<188>1 "));
        assert!(rfc5424(0, &mid, "h", "a", 0, "").ends_with(" - -"));
        let long = rfc5424(1, &lo, &"h".repeat(300), &"a".repeat(60), 0, "m");
        let f: Vec<&str> = long.split(' ').collect();
        assert_eq!((f[2].len(), f[3].len()), (255, 48));
    }

    #[test]
    fn tcp_frame_counts_bytes() {
        assert_eq!(frame_tcp("héllo"), b"6 h\xc3\xa9llo");
        assert_eq!(frame_tcp(""), b"0 ");
    }

    #[tokio::test]
    async fn udp_round_trip_cuts_on_a_char_boundary() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = format!("udp://{}", server.local_addr().expect("addr"));
        let mut t = SyslogTransport::connect(&addr).await.expect("connect");
        t.send("<14>1 - - - - - - hello").await.expect("send");
        let mut buf = vec![0u8; 65_536];
        let n = server.recv(&mut buf).await.expect("recv");
        assert_eq!(&buf[..n], b"<14>1 - - - - - - hello");
        let long = format!("x{}", "é".repeat(2000)); // 4001 bytes; byte 2048 is mid-char
        t.send(&long).await.expect("send");
        let n = server.recv(&mut buf).await.expect("recv");
        assert_eq!(n, 2047);
        assert!(long.starts_with(std::str::from_utf8(&buf[..n]).expect("utf-8")));
        assert!(SyslogTransport::connect("http://127.0.0.1:1")
            .await
            .is_err());
    }

    async fn read_frame(s: &mut BufReader<TcpStream>) -> String {
        let mut len = Vec::new();
        s.read_until(b' ', &mut len).await.expect("length");
        let n: usize = String::from_utf8_lossy(&len)
            .trim_end()
            .parse()
            .expect("digits");
        let mut msg = vec![0u8; n];
        s.read_exact(&mut msg).await.expect("message");
        String::from_utf8(msg).expect("utf-8")
    }

    #[tokio::test]
    async fn tcp_round_trip_and_reconnect() {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = format!("tcp://{}", server.local_addr().expect("addr"));
        let mut t = SyslogTransport::connect(&addr).await.expect("connect");
        let mut s = BufReader::new(server.accept().await.expect("accept").0);
        t.send("<14>1 héllo\nwörld").await.expect("send");
        t.send("second").await.expect("send");
        assert_eq!(read_frame(&mut s).await, "<14>1 héllo\nwörld");
        assert_eq!(read_frame(&mut s).await, "second");
        // The collector restarts: the next message must arrive on a new connection.
        drop(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.send("after restart").await.expect("send");
        let accept = tokio::time::timeout(Duration::from_secs(5), server.accept());
        let s2 = accept.await.expect("no reconnect").expect("accept").0;
        assert_eq!(read_frame(&mut BufReader::new(s2)).await, "after restart");
    }

    #[test]
    fn an_operator_action_is_a_cef_audit_record() {
        let c = audit_cef(&crate::vocab::AuditEvent::example("audit-1"), "1.0");
        assert!(c.starts_with("CEF:0|probewatch|probewatch|1.0|audit:block|Operator block|3|rt=1700000000000 act=block"), "{c}");
        assert!(
            c.contains("suser=PW_OPERATOR_TOKEN") && c.contains("duser=k-abc"),
            "{c}"
        );
        // The reason is free text: its `=` is escaped, its pipe passes.
        assert!(c.ends_with("msg=key leaked | see ticket\\=42"), "{c}");
    }
}

//! ArcSight CEF over RFC 5424 syslog, with UDP (one datagram) and TCP (RFC 6587 octet
//! counting) transports.

use super::cloudevents::rfc3339_ms;
use super::slack::{summary, title};
use super::{Alert, Event};
use crate::detect::policy::Severity;
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

/// CEF header field: backslash and pipe are escaped; a line break would end the record, so it
/// becomes a space (the spec allows line breaks only in extension values).
fn header_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// CEF extension value: backslash, equals sign and line breaks are escaped (`\n`, `\r`);
/// pipes need no escape there.
fn ext_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// The CEF:0 record of an alert event:
/// `CEF:0|probewatch|probewatch|<version>|<technique>:<kind>|<name>|<severity>|<extension>`.
/// Extension keys are CEF dictionary keys (`rt`, `start`, `end` in epoch ms); the custom
/// strings carry what the dictionary has no key for, labelled.
pub fn cef(a: &Alert, version: &str) -> String {
    let event = match a.event {
        Event::Raised => "raised",
        Event::Updated => "updated",
        Event::Resolved => "resolved",
    };
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
        ("cs5Label", "evidence".into()),
        ("cs5", evidence),
        ("cfp1Label", "confidence".into()),
        ("cfp1", format!("{confidence:.4}")),
        ("cn1Label", "windowQueries".into()),
        ("cn1", a.queries.window.to_string()),
    ];
    let ext: Vec<String> = ext
        .iter()
        .map(|(k, v)| format!("{k}={}", ext_escape(v)))
        .collect();
    format!(
        "CEF:0|probewatch|probewatch|{}|{}|{}|{}|{}",
        header_escape(version),
        header_escape(&signature),
        header_escape(&name),
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
    format!(
        "<{pri}>1 {} {} {} {} - - {msg}",
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

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

/// A syslog connection to `udp://host:port` or `tcp://host:port`.
pub struct SyslogTransport {
    addr: String,
    conn: Conn,
}

impl std::fmt::Debug for SyslogTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogTransport")
            .field("addr", &self.addr)
            .finish()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    const NASTY: &str = "a|b\\c=d\nx";

    #[test]
    fn cef_escapes_header_and_extension_differently() {
        assert_eq!(header_escape(NASTY), "a\\|b\\\\c=d x");
        assert_eq!(ext_escape(NASTY), "a|b\\\\c\\=d\\nx");
        assert_eq!(ext_escape("x\r\ny"), "x\\r\\ny");
        let mut a = Alert::example("al-5");
        a.client = NASTY.into();
        let line = cef(&a, NASTY);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("CEF:0|probewatch|probewatch|a\\|b\\\\c=d x|AML.T0024.002:extraction|Model extraction raised|8|"), "{line}");
        assert!(line.contains(" suser=a|b\\\\c\\=d\\nx "), "{line}");
    }

    #[test]
    fn cef_extension_carries_the_alert() {
        let mut a = Alert::example("al-5");
        a.event = Event::Resolved;
        a.event_id = "al-5.2".into();
        a.severity = Severity::Critical;
        let line = cef(&a, "0.1.0");
        let (head, ext) = line.rsplit_once('|').expect("header");
        assert_eq!(head, "CEF:0|probewatch|probewatch|0.1.0|AML.T0024.002:extraction|Model extraction resolved|10");
        for want in [
            "rt=1700000060000",
            "act=resolved",
            "cat=extraction",
            "suser=c-17",
            "cnt=300",
            "start=1700000000000",
            "end=1700000060000",
            "externalId=al-5.2",
            "cs1Label=model cs1=digits-mlp",
            "cs2Label=alertId cs2=al-5",
            "cs3Label=eventId cs3=al-5.2",
            "cfp1Label=confidence cfp1=0.9000",
            "cn1Label=windowQueries cn1=120",
        ] {
            assert!(ext.contains(want), "{want} not in {ext}");
        }
        // The evidence JSON's `:` and `,` pass, but its quotes stay; only `=` would need escaping.
        assert!(
            ext.contains("cs5={\"normal_out_of_range_share\":0.01,\"out_of_range_share\":0.9}"),
            "{ext}"
        );
        assert_eq!(
            [
                cef_severity(Severity::Low),
                cef_severity(Severity::Medium),
                cef_severity(Severity::High)
            ],
            [3, 5, 8]
        );
    }

    #[test]
    fn rfc5424_header() {
        // local4 (20) * 8 + error (3) = 163.
        let m = rfc5424(
            20,
            &Severity::High,
            "host 1.example",
            "probewatch",
            1_700_000_060_123,
            "CEF:0|x",
        );
        let pid = std::process::id();
        assert_eq!(
            m,
            format!("<163>1 2023-11-14T22:14:20.123Z host_1.example probewatch {pid} - - CEF:0|x")
        );
        assert!(rfc5424(1, &Severity::Critical, "h", "a", 0, "m")
            .starts_with("<10>1 1970-01-01T00:00:00.000Z h a "));
        assert!(rfc5424(16, &Severity::Low, "", "ünï", 0, "m")
            .starts_with("<133>1 1970-01-01T00:00:00.000Z - _n_ "));
        assert!(rfc5424(99, &Severity::Medium, "h", "a", 0, "m").starts_with("<188>1 "));
        let long = rfc5424(1, &Severity::Low, &"h".repeat(300), &"a".repeat(60), 0, "m");
        let f: Vec<&str> = long.split(' ').collect();
        assert_eq!((f[2].len(), f[3].len()), (255, 48));
    }

    #[test]
    fn tcp_frame_counts_bytes() {
        assert_eq!(frame_tcp("héllo"), b"6 h\xc3\xa9llo".to_vec());
        assert_eq!(frame_tcp(""), b"0 ".to_vec());
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

    async fn read_frame(s: &mut TcpStream) -> String {
        let mut len = Vec::new();
        loop {
            let b = s.read_u8().await.expect("len");
            if b == b' ' {
                break;
            }
            len.push(b);
        }
        let n: usize = std::str::from_utf8(&len)
            .expect("digits")
            .parse()
            .expect("len");
        let mut msg = vec![0u8; n];
        s.read_exact(&mut msg).await.expect("msg");
        String::from_utf8(msg).expect("utf-8")
    }

    #[tokio::test]
    async fn tcp_round_trip_and_reconnect() {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = format!("tcp://{}", server.local_addr().expect("addr"));
        let mut t = SyslogTransport::connect(&addr).await.expect("connect");
        let (mut s, _) = server.accept().await.expect("accept");
        t.send("<14>1 héllo\nwörld").await.expect("send");
        t.send("second").await.expect("send");
        assert_eq!(read_frame(&mut s).await, "<14>1 héllo\nwörld");
        assert_eq!(read_frame(&mut s).await, "second");
        // The collector restarts: the next message must arrive on a new connection.
        drop(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
        t.send("after restart").await.expect("send");
        let (mut s2, _) = server.accept().await.expect("reconnect");
        assert_eq!(read_frame(&mut s2).await, "after restart");
    }
}

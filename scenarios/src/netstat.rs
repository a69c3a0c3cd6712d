//! The kernel's TCP counters (Linux, `/proc/net/netstat`), read before and after a burst. A full accept queue
//! drops connection attempts, which clients retry 1, 3, 7, 15, 31 and 63 seconds later: a latency tail that
//! neither the server's nor the client's code shows. The counters are the whole machine's, so other traffic at
//! the same time counts too.

use serde::Serialize;

const NETSTAT_PATH: &str = "/proc/net/netstat";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpCounters {
    /// Connections completed while the listener's accept queue was full (`ListenOverflows`).
    pub listen_overflows: u64,
    /// Segments dropped at a listener, overflows included (`ListenDrops`).
    pub listen_drops: u64,
    /// SYN cookies sent because a listener's SYN queue was full (`SyncookiesSent`).
    pub syncookies_sent: u64,
    /// SYNs and SYN-ACKs sent again (`TCPSynRetrans`).
    pub syn_retransmits: u64,
}

impl TcpCounters {
    /// The counters now, or `None` where there is no `/proc/net/netstat`.
    pub fn read() -> Option<TcpCounters> {
        parse(&std::fs::read_to_string(NETSTAT_PATH).ok()?)
    }

    /// What was counted between `earlier` and `self`.
    pub fn since(self, earlier: TcpCounters) -> TcpCounters {
        TcpCounters {
            listen_overflows: self
                .listen_overflows
                .saturating_sub(earlier.listen_overflows),
            listen_drops: self.listen_drops.saturating_sub(earlier.listen_drops),
            syncookies_sent: self.syncookies_sent.saturating_sub(earlier.syncookies_sent),
            syn_retransmits: self.syn_retransmits.saturating_sub(earlier.syn_retransmits),
        }
    }
}

/// Reads the `TcpExt:` pair of lines (names, then values).
pub fn parse(text: &str) -> Option<TcpCounters> {
    let mut lines = text.lines().filter(|line| line.starts_with("TcpExt:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().skip(1).collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().skip(1).collect();
    let value = |name: &str| -> Option<u64> {
        let at = names.iter().position(|n| *n == name)?;
        values.get(at)?.parse().ok()
    };
    Some(TcpCounters {
        listen_overflows: value("ListenOverflows")?,
        listen_drops: value("ListenDrops")?,
        syncookies_sent: value("SyncookiesSent")?,
        syn_retransmits: value("TCPSynRetrans").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_come_from_the_tcpext_lines() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops TCPSynRetrans\n\
                    TcpExt: 7 1 120 130 42\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let counters = parse(text).expect("counters");
        assert_eq!(
            counters,
            TcpCounters {
                listen_overflows: 120,
                listen_drops: 130,
                syncookies_sent: 7,
                syn_retransmits: 42,
            }
        );
        let earlier = TcpCounters {
            listen_overflows: 100,
            ..counters
        };
        assert_eq!(counters.since(earlier).listen_overflows, 20);
        assert_eq!(counters.since(earlier).syn_retransmits, 0);
        assert_eq!(parse("IpExt: a\nIpExt: 1\n"), None);
        assert_eq!(parse("TcpExt: ListenOverflows\nTcpExt: x\n"), None);
    }
}

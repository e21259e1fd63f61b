//! `/metrics`: Prometheus text exposition format 0.0.4. Names are fixed (docs/OPERATIONS.md lists
//! them); labels are tags, roles, states and directions only, never a session, an address or a user,
//! so the series count is bounded by the config. Every configured tag is present from the start.

use std::fmt::Write;

use super::Snapshot;
use super::process::ProcessStats;
use super::traffic::TagCounts;
use crate::reverse::status::TagStatus;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"");
                escape(&mut self.text, v);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn unix_seconds(t: Option<std::time::SystemTime>) -> f64 {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0.0, |d| d.as_secs_f64())
}

/// Renders every metric.
pub fn render(s: &Snapshot, process: &ProcessStats) -> String {
    let mut o = Out { text: String::with_capacity(4096) };
    let tags: Vec<&TagStatus> = s.portals.iter().chain(&s.bridges).collect();

    o.family("oxray_build_info", "gauge", "Always 1; the version is in the label.");
    o.sample("oxray_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);
    o.family("oxray_ready", "gauge", "1 when /readyz answers 200.");
    o.sample("oxray_ready", &[], u8::from(s.not_ready(false).is_empty()));

    o.family("oxray_reverse_tunnels", "gauge", "Live tunnels by state.");
    for t in &tags {
        let draining = t.tunnels.iter().filter(|x| x.draining).count();
        let active = t.tunnels.len() - draining;
        for (state, n) in [("active", active), ("draining", draining)] {
            o.sample("oxray_reverse_tunnels", &[("role", t.role.as_str()), ("tag", &t.tag), ("state", state)], n);
        }
    }
    o.family(
        "oxray_reverse_sessions",
        "gauge",
        "Sessions open now through the tunnels (control sessions not counted).",
    );
    for t in &tags {
        let n: usize = t.tunnels.iter().map(|x| x.sessions.len()).sum();
        o.sample("oxray_reverse_sessions", &[("role", t.role.as_str()), ("tag", &t.tag)], n);
    }
    o.family("oxray_reverse_sessions_total", "counter", "Sessions ever carried through the tunnels.");
    for t in &tags {
        o.sample("oxray_reverse_sessions_total", &[("role", t.role.as_str()), ("tag", &t.tag)], t.sessions_total);
    }
    o.family(
        "oxray_reverse_bytes_total",
        "counter",
        "Payload bytes through the tunnels; uplink = towards the service behind the bridge.",
    );
    for t in &tags {
        for (dir, n) in [("uplink", t.uplink), ("downlink", t.downlink)] {
            o.sample("oxray_reverse_bytes_total", &[("role", t.role.as_str()), ("tag", &t.tag), ("direction", dir)], n);
        }
    }
    o.family("oxray_reverse_dials_total", "counter", "Tunnel dials of each bridge, by result.");
    for t in s.bridges.iter() {
        for (result, n) in &t.dials {
            o.sample("oxray_reverse_dials_total", &[("tag", &t.tag), ("result", result)], n);
        }
    }
    o.family("oxray_reverse_drains_total", "counter", "Tunnels drained, by reason.");
    for t in &tags {
        for (reason, n) in &t.drains {
            o.sample("oxray_reverse_drains_total", &[("tag", &t.tag), ("reason", reason)], n);
        }
    }
    o.family(
        "oxray_reverse_last_heartbeat_timestamp_seconds",
        "gauge",
        "Unix time of the newest heartbeat sent (portal) or received (bridge); 0 = never.",
    );
    for t in &tags {
        o.sample(
            "oxray_reverse_last_heartbeat_timestamp_seconds",
            &[("role", t.role.as_str()), ("tag", &t.tag)],
            unix_seconds(t.last_heartbeat),
        );
    }

    for (kind, list) in [("inbound", &s.inbounds), ("outbound", &s.outbounds)] {
        traffic(&mut o, kind, list);
    }

    o.family("process_cpu_seconds_total", "counter", "User and system CPU time spent, in seconds.");
    o.sample("process_cpu_seconds_total", &[], process.cpu_seconds);
    o.family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    o.sample("process_resident_memory_bytes", &[], process.resident_bytes);
    o.family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    o.sample("process_virtual_memory_bytes", &[], process.virtual_bytes);
    o.family("process_open_fds", "gauge", "Open file descriptors.");
    o.sample("process_open_fds", &[], process.open_fds);
    o.family("process_max_fds", "gauge", "Limit on open file descriptors.");
    o.sample("process_max_fds", &[], process.max_fds);
    o.family("process_start_time_seconds", "gauge", "Start time of the process since the Unix epoch in seconds.");
    o.sample("process_start_time_seconds", &[], process.start_time_seconds);
    o.text
}

fn traffic(o: &mut Out, kind: &str, list: &[(String, TagCounts)]) {
    let (open, total, bytes) = match kind {
        "inbound" => ("oxray_inbound_connections", "oxray_inbound_connections_total", "oxray_inbound_bytes_total"),
        _ => ("oxray_outbound_connections", "oxray_outbound_connections_total", "oxray_outbound_bytes_total"),
    };
    o.family(open, "gauge", &format!("Connections open now per {kind} tag."));
    for (tag, c) in list {
        o.sample(open, &[("tag", tag)], c.open);
    }
    o.family(total, "counter", &format!("Connections ever per {kind} tag."));
    for (tag, c) in list {
        o.sample(total, &[("tag", tag)], c.total);
    }
    o.family(
        bytes,
        "counter",
        &format!("Payload bytes per {kind} tag (live connections added once a second); uplink = client to target."),
    );
    for (tag, c) in list {
        for (dir, n) in [("uplink", c.uplink), ("downlink", c.downlink)] {
            o.sample(bytes, &[("tag", tag), ("direction", dir)], n);
        }
    }
}

//! Logging: V2Ray's `log` object. The error log is `tracing` filtered by level; the access log (a line
//! per routed flow) is written directly, in V2Ray's layout.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogLevel, LogTarget};

/// Log bytes a writer holds before it drops lines (lossy, like tracing-appender's default).
const LOG_PENDING_MAX: usize = 1 << 20;
/// How long the writer thread waits after the first line of a batch for more lines to join it.
const LOG_BATCH_DELAY: Duration = Duration::from_millis(10);

/// Keeps log writers flushing; drop it last (it writes out what is pending).
pub struct LogGuard {
    access: AccessLog,
    _guards: Vec<WriterGuard>,
}

impl LogGuard {
    /// The access log configured by `log.access` (off when it is `"none"` or the level is `none`).
    pub fn access(&self) -> AccessLog {
        self.access.clone()
    }
}

struct Pending {
    buf: Vec<u8>,
    closed: bool,
    stamp: Stamp,
}

/// Length of a log time stamp: `2006/01/02 15:04:05 `.
const STAMP_LEN: usize = 20;

/// The time stamp of the last second an access line was written in, formatted once for that second.
struct Stamp {
    sec: u64,
    text: [u8; STAMP_LEN],
}

/// The access log: a line per routed flow in V2Ray 4.34's layout, local time to the second,
/// `2006/01/02 15:04:05 127.0.0.1:51860 accepted tcp:127.0.0.1:80 [external -> portal]`.
///
/// The line is formatted straight into the writer's batch buffer, bypassing `tracing`: its event
/// machinery, per-line time formatting and message escaping cost ~4 % of the connection rate
/// (docs/BENCHMARKS.md, round 5). A peer cannot forge lines through it: see `dispatch::access_line`.
/// The default value is off.
#[derive(Clone, Default)]
pub struct AccessLog(Option<Arc<Shared>>);

impl AccessLog {
    /// Whether lines are written at all (so callers can skip gathering them).
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Appends one line: the time stamp, `body`, a newline. Dropped when the writer has fallen
    /// `LOG_PENDING_MAX` behind.
    pub fn line(&self, body: fmt::Arguments<'_>) {
        let Some(shared) = &self.0 else { return };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut guard = lock_pending(shared);
        let Pending { buf, stamp, .. } = &mut *guard;
        let start = buf.len();
        if stamp.sec != now {
            *stamp = Stamp { sec: now, text: local_stamp(now) };
        }
        buf.extend_from_slice(&stamp.text);
        // Writing into a Vec fails only if a Display impl does; then the line is dropped whole.
        if buf.write_fmt(body).is_err() || buf.len() + 1 > LOG_PENDING_MAX {
            buf.truncate(start);
            return;
        }
        buf.push(b'\n');
        drop(guard);
        if start == 0 {
            shared.wake.notify_one();
        }
    }
}

#[cfg(test)]
impl AccessLog {
    /// An access log that keeps its lines in memory (no writer thread), for tests.
    pub(crate) fn in_memory() -> Self {
        AccessLog(Some(Shared::new()))
    }

    /// What was written so far, time stamps included.
    pub(crate) fn written(&self) -> String {
        self.0.as_ref().map_or_else(String::new, |s| String::from_utf8_lossy(&lock_pending(s).buf).into_owned())
    }
}

/// The error log's line layout, V2Ray's: `2006/01/02 15:04:05 [Warning] message key=value`, so
/// the two logs read alike when both go to the console, and tools written for V2Ray's logs still parse.
struct V2rayLayout;

impl<S, N> FormatEvent<S, N> for V2rayLayout
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        writer.write_str(std::str::from_utf8(&local_stamp(now)).unwrap_or_default())?;
        writer.write_str(match *event.metadata().level() {
            Level::ERROR => "[Error] ",
            Level::WARN => "[Warning] ",
            Level::INFO => "[Info] ",
            Level::DEBUG => "[Debug] ",
            Level::TRACE => "[Trace] ",
        })?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// `--log-format json`: one JSON object per line (`time` as Unix seconds, `level`, `target`,
/// `message`, then the event's fields), for log shippers.
struct JsonLayout;

/// Collects an event's fields as JSON values.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_string(), serde_json::Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_string(), serde_json::Value::String(value.to_string()));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

impl<S, N> FormatEvent<S, N> for JsonLayout
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let mut m = serde_json::Map::new();
        m.insert("time".into(), serde_json::json!((now * 1000.0).round() / 1000.0));
        m.insert("level".into(), event.metadata().level().as_str().to_ascii_lowercase().into());
        m.insert("target".into(), event.metadata().target().into());
        event.record(&mut JsonFields(&mut m));
        writeln!(writer, "{}", serde_json::Value::Object(m))
    }
}

/// `sec` (Unix time) as local time in the logs' layout; UTC where the C library cannot say.
fn local_stamp(sec: u64) -> [u8; STAMP_LEN] {
    #[cfg(unix)]
    if let Ok(t) = libc::time_t::try_from(sec) {
        // SAFETY: an all-zero `tm` is a valid value (integers and a null zone pointer).
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call; `localtime_r` writes only through `tm` and,
        // unlike `localtime`, keeps no shared result buffer.
        if !unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
            return format_stamp(
                i64::from(tm.tm_year) + 1900,
                tm.tm_mon + 1,
                tm.tm_mday,
                tm.tm_hour,
                tm.tm_min,
                tm.tm_sec,
            );
        }
    }
    utc_stamp(sec)
}

/// `sec` (Unix time) as UTC in the logs' layout.
fn utc_stamp(sec: u64) -> [u8; STAMP_LEN] {
    let days = i64::try_from(sec / 86_400).unwrap_or(i64::MAX / 2);
    let rem = (sec % 86_400) as i32;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian; eras of 400 years from 0000-03-01).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as i32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as i32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    format_stamp(year, month, day, rem / 3_600, rem / 60 % 60, rem % 60)
}

/// `YYYY/MM/DD hh:mm:ss ` (Go's `log.Ldate | log.Ltime`, as V2Ray writes it); the year is clamped to
/// four digits.
fn format_stamp(year: i64, month: i32, day: i32, hour: i32, min: i32, sec: i32) -> [u8; STAMP_LEN] {
    let mut out = *b"0000/00/00 00:00:00 ";
    let mut put = |at: usize, width: usize, v: i64| {
        let mut v = v.clamp(0, 10_i64.pow(width as u32) - 1);
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month.into());
    put(8, 2, day.into());
    put(11, 2, hour.into());
    put(14, 2, min.into());
    put(17, 2, sec.into());
    out
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

impl Shared {
    fn new() -> Arc<Self> {
        // No second has a stamp yet: `u64::MAX` matches no clock reading.
        let stamp = Stamp { sec: u64::MAX, text: [0; STAMP_LEN] };
        Arc::new(Shared {
            pending: Mutex::new(Pending { buf: Vec::new(), closed: false, stamp }),
            wake: Condvar::new(),
        })
    }
}

fn lock_pending(s: &Shared) -> MutexGuard<'_, Pending> {
    s.pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// A log sink fed by the logging call sites without blocking on I/O: lines go to a shared buffer and
/// one thread writes them out in batches. Only the first line of a batch wakes that thread, so a
/// line per connection (the access log) costs a memcpy, not a cross-thread wake-up and a context
/// switch each (which halved the connection rate with tracing-appender's one-message-per-line queue).
#[derive(Clone)]
struct BatchWriter(Arc<Shared>);

impl Write for BatchWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut p = lock_pending(&self.0);
        if p.buf.len() + line.len() <= LOG_PENDING_MAX {
            let first = p.buf.is_empty();
            p.buf.extend_from_slice(line);
            drop(p);
            if first {
                self.0.wake.notify_one();
            }
        }
        Ok(line.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Ends the writer thread after it has written everything pending.
struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        lock_pending(&self.shared).closed = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn batch_writer(mut sink: Box<dyn Write + Send>) -> io::Result<(BatchWriter, WriterGuard)> {
    let shared = Shared::new();
    let s = shared.clone();
    let thread = std::thread::Builder::new().name("oxray-log".into()).stack_size(64 * 1024).spawn(move || {
        let mut out = Vec::new();
        loop {
            let mut p = lock_pending(&s);
            while p.buf.is_empty() && !p.closed {
                p = s.wake.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            if !p.closed {
                // Let the lines of a burst join this batch.
                drop(p);
                std::thread::sleep(LOG_BATCH_DELAY);
                p = lock_pending(&s);
            }
            std::mem::swap(&mut p.buf, &mut out);
            let closed = p.closed;
            drop(p);
            let _ = sink.write_all(&out).and_then(|()| sink.flush());
            out.clear();
            if closed {
                return;
            }
        }
    })?;
    Ok((BatchWriter(shared.clone()), WriterGuard { shared, thread: Some(thread) }))
}

/// Maps `log.loglevel` to a tracing level filter.
pub fn level_filter(level: LogLevel) -> LevelFilter {
    match level {
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Warning => LevelFilter::WARN,
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::None => LevelFilter::OFF,
    }
}

fn fmt_layer<S>(
    w: BatchWriter,
) -> tracing_subscriber::fmt::Layer<
    S,
    tracing_subscriber::fmt::format::DefaultFields,
    tracing_subscriber::fmt::format::Format,
    BatchWriter,
> {
    tracing_subscriber::fmt::layer().with_writer(w).with_ansi(false)
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

fn writer(target: &LogTarget, guards: &mut Vec<WriterGuard>) -> io::Result<Option<BatchWriter>> {
    let sink: Box<dyn Write + Send> = match target {
        LogTarget::Off => return Ok(None),
        LogTarget::Console => Box::new(io::stdout()),
        LogTarget::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
    };
    let (w, guard) = batch_writer(sink)?;
    guards.push(guard);
    Ok(Some(w))
}

/// Installs the global subscriber for the process. `OXRAY_LOG` (an env-filter string) overrides the level.
pub fn init(config: &LogConfig) -> io::Result<LogGuard> {
    init_with(config, false)
}

/// [`init`], with the error log as JSON lines when `json` (the access log keeps V2Ray's layout).
pub fn init_with(config: &LogConfig, json: bool) -> io::Result<LogGuard> {
    let mut guards = Vec::new();
    let mut layers: Vec<BoxedLayer> = Vec::new();

    if let Some(w) = writer(&config.error, &mut guards)? {
        let env = std::env::var("OXRAY_LOG").ok().and_then(|s| s.parse::<tracing_subscriber::EnvFilter>().ok());
        let layer: BoxedLayer = match (env, json) {
            (Some(f), true) => Box::new(fmt_layer(w).event_format(JsonLayout).with_filter(f)),
            (Some(f), false) => Box::new(fmt_layer(w).event_format(V2rayLayout).with_filter(f)),
            (None, true) => Box::new(fmt_layer(w).event_format(JsonLayout).with_filter(level_filter(config.level))),
            (None, false) => Box::new(fmt_layer(w).event_format(V2rayLayout).with_filter(level_filter(config.level))),
        };
        layers.push(layer);
    }
    let mut access = AccessLog::default();
    if config.level != LogLevel::None
        && let Some(w) = writer(&config.access, &mut guards)?
    {
        access = AccessLog(Some(w.0));
    }
    // A second init (tests, embedding) keeps the first subscriber; that is not an error.
    let _ = tracing_subscriber::registry().with(layers).try_init();
    Ok(LogGuard { access, _guards: guards })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_follow_the_calendar() {
        assert_eq!(&utc_stamp(0), b"1970/01/01 00:00:00 ");
        assert_eq!(&utc_stamp(951_782_400), b"2000/02/29 00:00:00 ", "leap day of a century leap year");
        assert_eq!(&utc_stamp(1_700_000_000), b"2023/11/14 22:13:20 ");
        assert_eq!(&utc_stamp(4_107_542_399), b"2100/02/28 23:59:59 ", "2100 is not a leap year");
        assert_eq!(&utc_stamp(4_107_542_400), b"2100/03/01 00:00:00 ");
        assert!(utc_stamp(u64::MAX).starts_with(b"9999/"), "years past 9999 are clamped");
    }

    #[test]
    fn local_stamps_are_utc_shifted_by_the_zone_offset() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let t = now as libc::time_t;
        // SAFETY: as in `local_stamp`.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        assert!(!unsafe { libc::localtime_r(&t, &mut tm) }.is_null());
        let shifted = now.checked_add_signed(tm.tm_gmtoff).expect("offset in range");
        assert_eq!(local_stamp(now), utc_stamp(shifted));
    }

    #[test]
    fn access_lines_are_stamped_and_whole() {
        let log = AccessLog::in_memory();
        let before = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        log.line(format_args!("{} accepted {} [{}]", "127.0.0.1:5", "tcp:a:1", "x -> y"));
        log.line(format_args!("- accepted {}", "udp:b:2"));
        let text = log.written();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        assert!(text.ends_with('\n'));
        assert_eq!(&lines[0][STAMP_LEN..], "127.0.0.1:5 accepted tcp:a:1 [x -> y]");
        assert_eq!(&lines[1][STAMP_LEN..], "- accepted udp:b:2");
        let stamps: Vec<[u8; STAMP_LEN]> = (before..before + 3).map(local_stamp).collect();
        assert!(stamps.iter().any(|s| s[..] == lines[0].as_bytes()[..STAMP_LEN]), "{text:?}");
    }

    #[test]
    fn error_log_lines_have_v2rays_layout() {
        let log = AccessLog::in_memory();
        let shared = log.0.clone().expect("in memory");
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(BatchWriter(shared))
            .with_ansi(false)
            .event_format(V2rayLayout);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(session = 7, "tunnel lost");
            tracing::error!("port taken");
        });
        let text = log.written();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text:?}");
        assert_eq!(&lines[0][STAMP_LEN..], "[Warning] tunnel lost session=7");
        assert_eq!(&lines[1][STAMP_LEN..], "[Error] port taken");
        assert!(crate::testing::log_stamp_seconds(lines[0]).is_some(), "{text:?}");
    }

    #[test]
    fn a_line_that_does_not_fit_is_dropped_whole() {
        let log = AccessLog::in_memory();
        let big = "x".repeat(LOG_PENDING_MAX - 100);
        log.line(format_args!("{big}"));
        let len = log.written().len();
        log.line(format_args!("{}", "y".repeat(200)));
        assert_eq!(log.written().len(), len, "a partial line was kept");
        assert!(!AccessLog::default().is_on());
        AccessLog::default().line(format_args!("nowhere"));
    }
}

//! Logging: V2Ray's `log` object mapped onto `tracing` (error log by level, access log one line per flow).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::Level;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogLevel, LogTarget};

/// Target of access-log events.
pub const ACCESS_TARGET: &str = "oxray::access";

/// Log bytes a writer holds before it drops lines (lossy, like tracing-appender's default).
const LOG_PENDING_MAX: usize = 1 << 20;
/// How long the writer thread waits after the first line of a batch for more lines to join it.
const LOG_BATCH_DELAY: Duration = Duration::from_millis(10);

/// Keeps log writers flushing; drop it last (it writes out what is pending).
pub struct LogGuard {
    _guards: Vec<WriterGuard>,
}

struct Pending {
    buf: Vec<u8>,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
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
    let shared =
        Arc::new(Shared { pending: Mutex::new(Pending { buf: Vec::new(), closed: false }), wake: Condvar::new() });
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
    let mut guards = Vec::new();
    let mut layers: Vec<BoxedLayer> = Vec::new();

    if let Some(w) = writer(&config.error, &mut guards)? {
        let env = std::env::var("OXRAY_LOG").ok().and_then(|s| s.parse::<tracing_subscriber::EnvFilter>().ok());
        let base = tracing_subscriber::fmt::layer().with_writer(w).with_ansi(false).with_target(false);
        let layer: BoxedLayer = match env {
            Some(filter) => Box::new(base.with_filter(filter).with_filter(filter_fn(|m| m.target() != ACCESS_TARGET))),
            None => Box::new(
                base.with_filter(level_filter(config.level)).with_filter(filter_fn(|m| m.target() != ACCESS_TARGET)),
            ),
        };
        layers.push(layer);
    }
    if config.level != LogLevel::None
        && let Some(w) = writer(&config.access, &mut guards)?
    {
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(w)
            .with_ansi(false)
            .with_target(false)
            .with_level(false)
            .with_filter(Targets::new().with_target(ACCESS_TARGET, Level::INFO));
        layers.push(Box::new(layer));
    }
    // A second init (tests, embedding) keeps the first subscriber; that is not an error.
    let _ = tracing_subscriber::registry().with(layers).try_init();
    Ok(LogGuard { _guards: guards })
}

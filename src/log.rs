//! Logging: V2Ray's `log` object mapped onto `tracing` (error log by level, access log one line per flow).

use std::fs::OpenOptions;
use std::io;

use tracing::Level;
use tracing::level_filters::LevelFilter;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogLevel, LogTarget};

/// Target of access-log events.
pub const ACCESS_TARGET: &str = "oxray::access";

/// Lines a log writer queues before it drops (lossy, as tracing-appender's default).
const LOG_QUEUE_LINES: usize = 4096;

/// Keeps log writers flushing; drop it last.
pub struct LogGuard {
    _guards: Vec<WorkerGuard>,
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

fn writer(
    target: &LogTarget,
    guards: &mut Vec<WorkerGuard>,
) -> io::Result<Option<tracing_appender::non_blocking::NonBlocking>> {
    // The queue is allocated (and touched) whole up front: tracing-appender's default of 128,000
    // lines costs 4 MiB of RSS per writer. A few thousand lines absorb any burst at warning level.
    let builder = || tracing_appender::non_blocking::NonBlockingBuilder::default().buffered_lines_limit(LOG_QUEUE_LINES);
    let (nb, guard) = match target {
        LogTarget::Off => return Ok(None),
        LogTarget::Console => builder().finish(io::stdout()),
        LogTarget::File(path) => {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            builder().finish(file)
        }
    };
    guards.push(guard);
    Ok(Some(nb))
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

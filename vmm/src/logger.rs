//! A small stderr logger for the `log` facade: `vfiovm: level: message`, with the time since
//! start at debug level and above. Verbosity comes from `-v` flags or `VFIOVM_LOG`.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger {
    start: Instant,
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = if self.level >= LevelFilter::Debug {
            let t = self.start.elapsed();
            writeln!(
                err,
                "vfiovm: [{:>4}.{:06}] {}: {}",
                t.as_secs(),
                t.subsec_micros(),
                record.level().as_str().to_ascii_lowercase(),
                record.args()
            )
        } else {
            writeln!(
                err,
                "vfiovm: {}: {}",
                record.level().as_str().to_ascii_lowercase(),
                record.args()
            )
        };
    }

    fn flush(&self) {}
}

/// The level for `verbosity` `-v` flags, unless `VFIOVM_LOG` names one.
pub fn level_for(verbosity: u8, env: Option<&str>) -> LevelFilter {
    if let Some(l) = env.and_then(|s| s.parse::<LevelFilter>().ok()) {
        return l;
    }
    match verbosity {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Installs the logger (once; later calls only change the level).
pub fn init(level: LevelFilter) {
    static LOGGER: OnceLock<StderrLogger> = OnceLock::new();
    let logger = LOGGER.get_or_init(|| StderrLogger {
        start: Instant::now(),
        level: LevelFilter::Trace,
    });
    let _ = log::set_logger(logger);
    log::set_max_level(level);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(level_for(0, None), LevelFilter::Warn);
        assert_eq!(level_for(2, None), LevelFilter::Debug);
        assert_eq!(level_for(0, Some("debug")), LevelFilter::Debug);
        assert_eq!(level_for(1, Some("nonsense")), LevelFilter::Info);
    }
}

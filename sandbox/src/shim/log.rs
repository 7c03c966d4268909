//! The shim's log: one line per `tracing` event on stderr (the shim's log file).
//!
//! A subscriber of its own rather than tracing-subscriber's `fmt`: the shim only emits flat events
//! (no spans, no filtering beyond a level), and fmt's registry and formatting machinery cost
//! about 0.5 MiB of RSS per pod, a quarter of the shim's memory budget.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

pub struct LineLogger {
    max: Level,
}

impl LineLogger {
    /// Installs the logger for the whole process; `max` is the most verbose level written.
    pub fn install(max: Level) {
        let _ = tracing::subscriber::set_global_default(LineLogger { max });
    }
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Subscriber for LineLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line(format!(
            "{} {:>5}",
            jiff::Timestamp::now(),
            event.metadata().level()
        ));
        event.record(&mut line);
        line.0.push('\n');
        let _ = std::io::stderr().write_all(line.0.as_bytes());
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

//! raft-rs logs through slog; this drain hands every record to `tracing`.

use std::fmt::Write as _;

use slog::{Drain, KV as _, Level, OwnedKVList, Record, Serializer};

/// A slog drain that forwards to tracing at the matching level.
#[derive(Debug, Clone, Copy)]
pub struct TracingDrain;

struct Fields(String);

impl Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut f = Fields(String::new());
        let _ = record.kv().serialize(record, &mut f);
        let _ = values.serialize(record, &mut f);
        let msg = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "raft", "{msg}{}", f.0),
            Level::Warning => tracing::warn!(target: "raft", "{msg}{}", f.0),
            Level::Info => tracing::info!(target: "raft", "{msg}{}", f.0),
            Level::Debug => tracing::debug!(target: "raft", "{msg}{}", f.0),
            Level::Trace => tracing::trace!(target: "raft", "{msg}{}", f.0),
        }
        Ok(())
    }
}

/// The root logger raft-rs is given.
pub fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

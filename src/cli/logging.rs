//! Log lines on stderr. Text mode is for people: a timestamp, the level, a short target
//! (`controller`, not `plugsync::controller::reconcile`), the message, then `key=value`
//! fields with values as people write them (no Rust `Debug` quoting of plain strings), in
//! colour only on a terminal and never when `NO_COLOR` is set. JSON mode is one object per
//! line, for log collectors.

use std::fmt::{self, Write as _};
use std::io::IsTerminal;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether text logs on stderr are coloured: only on a terminal, and not when `NO_COLOR` is
/// set to anything but the empty string (<https://no-color.org>).
pub(super) fn colour(no_color: Option<&std::ffi::OsStr>, terminal: bool) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber: text or JSON on stderr, `default` unless `RUST_LOG`.
pub(super) fn init(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        let ansi = colour(
            std::env::var_os("NO_COLOR").as_deref(),
            std::io::stderr().is_terminal(),
        );
        builder
            .with_ansi(ansi)
            .fmt_fields(PeopleFields)
            .event_format(TextFormat { ansi })
            .try_init()
    };
}

/// `plugsync_kube::controller::reconcile` → `controller`, `plugsync::app::run` → `run`: the
/// part of plugsync speaking, whichever of its crates it lives in. Other crates' targets (with
/// `RUST_LOG`) stay whole, so their origin is not lost.
pub(super) fn short_target(target: &str) -> &str {
    let ours = ["plugsync::", "plugsync_kube::", "plugsync_core::"]
        .iter()
        .find_map(|prefix| target.strip_prefix(prefix));
    match ours {
        Some(rest) => {
            let rest = ["cli::", "app::"]
                .iter()
                .find_map(|layer| rest.strip_prefix(layer))
                .unwrap_or(rest);
            rest.split("::").next().unwrap_or(rest)
        }
        None => target,
    }
}

/// One line per event: `2025-01-01T12:00:00Z  WARN controller: message key=value`.
struct TextFormat {
    ansi: bool,
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let time = humantime::format_rfc3339_seconds(SystemTime::now());
        let level = *meta.level();
        let (colour, plain) = (level_colour(level), "\x1b[0m");
        if self.ansi {
            write!(writer, "\x1b[2m{time}{plain} {colour}{level:>5}{plain} ")?;
        } else {
            write!(writer, "{time} {level:>5} ")?;
        }
        write!(writer, "{}: ", short_target(meta.target()))?;
        ctx.format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

fn level_colour(level: Level) -> &'static str {
    match level {
        Level::ERROR => "\x1b[31m",
        Level::WARN => "\x1b[33m",
        Level::INFO => "\x1b[32m",
        Level::DEBUG => "\x1b[34m",
        Level::TRACE => "\x1b[35m",
    }
}

/// Fields as people read them: the message, then `key=value`, a value quoted only when it
/// has to be (empty, or with spaces, quotes or `=`), errors with their causes.
pub(super) struct PeopleFields;

impl<'w> FormatFields<'w> for PeopleFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = PeopleVisitor::default();
        fields.record(&mut visitor);
        write!(writer, "{}{}", visitor.message, visitor.fields)
    }
}

#[derive(Default)]
struct PeopleVisitor {
    message: String,
    fields: String,
}

impl PeopleVisitor {
    fn value(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
            return;
        }
        // `r#type` and the like are spelled without the raw prefix.
        let name = field.name().trim_start_matches("r#");
        let needs_quotes = value.is_empty()
            || value
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '=');
        let _ = if needs_quotes {
            write!(self.fields, " {name}={value:?}")
        } else {
            write!(self.fields, " {name}={value}")
        };
    }
}

impl Visit for PeopleVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.value(field, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            // Many errors repeat their source in their own message already.
            if !text.contains(&cause_text) {
                let _ = write!(text, ": {cause_text}");
            }
            source = cause.source();
        }
        self.value(field, &text);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `%value` arrives here as a Debug that writes its Display: plain text.
        self.value(field, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::sync::{Arc, Mutex};

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(None, true));
        assert!(!colour(None, false), "not when piped or in a file");
        assert!(!colour(Some(OsStr::new("1")), true), "NO_COLOR=1");
        assert!(
            colour(Some(OsStr::new("")), true),
            "an empty NO_COLOR is unset"
        );
    }

    #[test]
    fn targets_are_short() {
        assert_eq!(
            short_target("plugsync::controller::reconcile"),
            "controller"
        );
        assert_eq!(short_target("plugsync::cli::run"), "run");
        assert_eq!(short_target("plugsync::app::run"), "run");
        assert_eq!(short_target("plugsync_kube::gitops"), "gitops");
        assert_eq!(
            short_target("plugsync_kube::controller::reconcile"),
            "controller"
        );
        assert_eq!(short_target("plugsync_core::fetch"), "fetch");
        assert_eq!(short_target("plugsync_core::resolve::cache"), "resolve");
        assert_eq!(short_target("plugsync::cli"), "cli");
        assert_eq!(
            short_target("kube_runtime::controller"),
            "kube_runtime::controller"
        );
    }

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(ansi: bool, log: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(ansi)
            .with_max_level(Level::TRACE)
            .fmt_fields(PeopleFields)
            .event_format(TextFormat { ansi })
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = buffer.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connection refused")]
    struct Refused;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the PluginSet")]
    struct Reading(#[source] Refused);

    #[test]
    fn a_text_line_has_time_level_short_target_and_plain_values() {
        let line = logged(false, || {
            tracing::warn!(
                target: "plugsync::controller::reconcile",
                plugin = "langgenius/agent@0.0.14",
                reason = %"BackoffLimitExceeded",
                message_text = "pip failed: no such package",
                attempt = 2,
                error = &Reading(Refused) as &(dyn std::error::Error + 'static),
                "build failed"
            )
        });
        let (time, rest) = line.split_once(' ').expect("a timestamp first");
        assert!(
            humantime::parse_rfc3339(time).is_ok(),
            "an RFC 3339 time: {line}"
        );
        assert_eq!(
            rest,
            " WARN controller: build failed plugin=langgenius/agent@0.0.14 \
             reason=BackoffLimitExceeded message_text=\"pip failed: no such package\" attempt=2 \
             error=\"reading the PluginSet: connection refused\"\n"
        );
        assert!(!line.contains('\x1b'), "no colour: {line:?}");
    }

    #[test]
    fn colour_is_escape_codes_around_time_and_level() {
        let line = logged(
            true,
            || tracing::info!(target: "plugsync::gitops", "applied"),
        );
        assert!(
            line.contains("\x1b[32m INFO\x1b[0m gitops: applied"),
            "{line:?}"
        );
    }
}

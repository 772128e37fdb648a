//! Download progress bars on a terminal (and nothing when output is piped or in CI logs).

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use plugsync_core::fetch::Progress;
use plugsync_core::resolve::ProgressReporter;

/// One bar per download, stacked.
pub struct TerminalProgress {
    bars: MultiProgress,
}

impl TerminalProgress {
    /// Bars drawn on stderr.
    pub fn new() -> TerminalProgress {
        TerminalProgress {
            bars: MultiProgress::new(),
        }
    }
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self::new()
    }
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: Option<u64>) {
        if let Some(total) = total {
            self.0.set_length(total);
            self.0.set_style(
                ProgressStyle::with_template(
                    "{msg:40!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
        }
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

impl ProgressReporter for TerminalProgress {
    fn download(&self, label: &str) -> Box<dyn Progress> {
        let bar = self.bars.add(ProgressBar::no_length());
        bar.set_style(
            ProgressStyle::with_template("{msg:40!} {spinner} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(label.to_string());
        Box::new(Bar(bar))
    }
}

//! Progress for the archive commands: a byte bar on a terminal, nothing when stderr is not one (logs and CI stay
//! clean) or with `--quiet`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One byte-counting bar; every method is a no-op when hidden.
#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar on stderr when it is a terminal and `quiet` is false; hidden otherwise.
    pub fn new(quiet: bool) -> Progress {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec} {wide_msg}",
            ) {
                bar.set_style(style);
            }
            bar
        };
        Progress { bar }
    }

    pub fn hidden() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    /// Adds to the total expected bytes.
    pub fn add_total(&self, n: u64) {
        self.bar.inc_length(n);
    }

    pub fn advance(&self, n: u64) {
        self.bar.inc(n);
    }

    /// What is being worked on.
    pub fn set_message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    /// A line above the bar (or on stderr when hidden): warnings and problems are always shown.
    pub fn println(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    /// A line above the bar on a terminal; nothing otherwise (for what the caller also reports at the end).
    pub fn note(&self, line: String) {
        if !self.bar.is_hidden() {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

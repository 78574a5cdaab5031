//! What a person sees during a run, on stderr: a progress bar (only when stderr is a terminal), a
//! line per finished stage, and the commands' stderr prefixed with their stage name.

use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) struct Reporter {
    bar: Option<ProgressBar>,
    quiet: bool,
    running: Mutex<Vec<String>>,
}

impl Reporter {
    /// `show_bar`: stderr is a terminal and `--no-progress` was not given.
    pub(crate) fn new(total: usize, show_bar: bool, quiet: bool) -> Self {
        let bar = show_bar.then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner:.cyan} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Reporter {
            bar,
            quiet,
            running: Mutex::new(Vec::new()),
        }
    }

    /// Prints a line on stderr, above the bar.
    pub(crate) fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{text}")),
            None => eprintln!("{text}"),
        }
    }

    fn update_message(&self, running: &[String]) {
        if let Some(bar) = &self.bar {
            let shown: Vec<&str> = running.iter().take(3).map(String::as_str).collect();
            let more = running.len().saturating_sub(3);
            let mut msg = if shown.is_empty() {
                String::new()
            } else {
                format!("running: {}", shown.join(", "))
            };
            if more > 0 {
                msg.push_str(&format!(" +{more}"));
            }
            bar.set_message(msg);
        }
    }

    pub(crate) fn stage_started(&self, name: &str) {
        if self.bar.is_none() {
            return;
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.push(name.to_owned());
        self.update_message(&running);
    }

    /// A stage finished; `top_level` ones advance the bar. `line` is printed unless quiet.
    pub(crate) fn stage_finished(&self, name: &str, top_level: bool, line: &str) {
        if let Some(bar) = &self.bar {
            if top_level {
                bar.inc(1);
            }
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = running.iter().position(|n| n == name) {
                running.remove(at);
            }
            self.update_message(&running);
        }
        if !self.quiet {
            self.line(line);
        }
    }

    /// `n` stages count as done without running (restored from the run store).
    pub(crate) fn advance(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// A line the stage's command wrote on stderr.
    pub(crate) fn stage_stderr(&self, stage: &str, text: &str) {
        if !self.quiet {
            self.line(&format!("[{stage}] {text}"));
        }
    }

    /// An informational line (retries), not printed when quiet.
    pub(crate) fn info(&self, text: &str) {
        if !self.quiet {
            self.line(text);
        }
    }

    /// A line printed even when quiet (interrupt notices, cleanup failures).
    pub(crate) fn notice(&self, text: &str) {
        self.line(text);
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

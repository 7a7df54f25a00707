//! Progress bars on stderr: drawn only when stderr is a terminal, with rate and ETA.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar for `len` steps of `unit`.
pub fn bar(len: u64, message: &str, unit: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = format!("{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(message.to_string());
    pb
}

/// A progress callback `(done, total)` that drives `pb`.
pub fn callback(pb: &ProgressBar) -> impl FnMut(usize, usize) + '_ {
    move |done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    }
}

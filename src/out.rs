//! The program's only way to the terminal outside the console's drawing: every line the CLI
//! prints, and what the console says before it takes the screen, goes through here.
//!
//! Text from files and other processes (run and experiment names, paths, GGUF metadata, model
//! output, error messages that quote a file) may hold escape sequences. Each write strips control
//! characters and escape introducers first ([`sanitize_for_terminal`]), so no call site can
//! forget to; `tests/output_paths.rs` keeps every other print out of `src/`.
//!
//! A closed stdout (a pager or `head` that quit) is an [`std::io::ErrorKind::BrokenPipe`] error
//! returned to the caller, which `cli::main` turns into a quiet exit, like other Unix tools. A
//! closed stderr is ignored: it must never stop a training run that reports progress there.

use std::io::Write as _;

use crate::core::text::sanitize_for_terminal;

/// Writes `text` to stdout, sanitised, and flushes it (so a closed pipe is seen here).
pub fn stdout(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(sanitize_for_terminal(text).as_bytes())?;
    out.flush()
}

/// Writes `text` to stderr, sanitised; a failed write is dropped.
pub fn stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(sanitize_for_terminal(text).as_bytes());
    let _ = err.flush();
}

/// Whether `e` is (caused by) a closed stdout.
#[must_use]
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` to stdout, sanitised; evaluates to `std::io::Result<()>`.
macro_rules! outln {
    () => {
        $crate::out::stdout("\n")
    };
    ($($arg:tt)*) => {
        $crate::out::stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` to stdout, sanitised; evaluates to `std::io::Result<()>`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::out::stdout(&format!($($arg)*))
    };
}

/// `eprintln!`, sanitised; a closed stderr is ignored.
macro_rules! errln {
    () => {
        $crate::out::stderr("\n")
    };
    ($($arg:tt)*) => {
        $crate::out::stderr(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!`, sanitised; a closed stderr is ignored.
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::out::stderr(&format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_closed_pipe_is_recognised_through_context() {
        let e = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing the table");
        assert!(super::is_broken_pipe(&e));
        assert!(!super::is_broken_pipe(&anyhow::anyhow!("other")));
    }
}

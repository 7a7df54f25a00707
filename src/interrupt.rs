//! Ctrl-C and SIGTERM: one flag that long operations poll to stop cleanly, shared by the command
//! line (which installs the handler) and the console (which leaves at a hang-up or termination
//! signal).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Set by Ctrl-C (SIGINT) or SIGTERM; long operations poll it and stop cleanly.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INTERRUPT_COUNT: AtomicUsize = AtomicUsize::new(0);

/// First Ctrl-C asks the running operation to stop; a second one exits at once when
/// `second_exits` (interactive commands), else it asks again.
pub fn install_handler(second_exits: bool) {
    let _ = ctrlc::set_handler(move || {
        INTERRUPTED.store(true, Ordering::SeqCst);
        if INTERRUPT_COUNT.fetch_add(1, Ordering::SeqCst) >= 1 && second_exits {
            std::process::exit(130);
        }
    });
}

/// Clears the interrupt flag (after an interrupted generation the REPL goes on).
pub fn reset() {
    INTERRUPTED.store(false, Ordering::SeqCst);
    INTERRUPT_COUNT.store(0, Ordering::SeqCst);
}

/// Whether `e` is (caused by) an interrupt: the engine's `Interrupted`, reached directly or
/// through the data directory's error.
#[must_use]
pub fn caused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let engine = c.downcast_ref::<crate::core::Error>().or_else(|| {
            c.downcast_ref::<slayer_data::Error>()
                .and_then(slayer_data::Error::engine)
        });
        matches!(engine, Some(crate::core::Error::Interrupted))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupt_is_seen_through_the_data_directory_and_a_context() {
        let direct = anyhow::Error::from(crate::core::Error::Interrupted);
        assert!(caused(&direct));
        let through_data =
            anyhow::Error::from(slayer_data::Error::from(crate::core::Error::Interrupted))
                .context("cannot evaluate run r");
        assert!(caused(&through_data));
        assert!(!caused(&anyhow::anyhow!("a full disk")));
    }
}

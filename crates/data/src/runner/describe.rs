//! Events as readable lines, for `runs tail`, `train`'s output and the console's log tail.

use slayer_engine::events::{EvalRecord, Event, EventKind};
use slayer_engine::text::sanitize_for_terminal;

/// A readable line for an event.
#[must_use]
pub fn describe(e: &Event) -> String {
    let text = match &e.kind {
        EventKind::RunStart {
            run,
            total_steps,
            resumed_from,
            ..
        } => match resumed_from {
            Some(step) => format!("resumed {run} from step {step} ({total_steps} steps)"),
            None => format!("started {run} ({total_steps} steps)"),
        },
        EventKind::Step {
            step,
            loss,
            lr,
            tokens_per_sec,
            grad_norm,
            ..
        } => format!(
            "step {step}: loss {loss:.4}, lr {lr:.2e}, grad {grad_norm:.3}, {tokens_per_sec:.0} tok/s"
        ),
        EventKind::SkippedStep { step, reason } => format!("step {step} skipped: {reason}"),
        EventKind::Eval(r) => eval_line(r),
        EventKind::Checkpoint { step, path } => format!("checkpoint at step {step}: {path}"),
        EventKind::Warning { message } => format!("warning: {message}"),
        EventKind::End {
            status,
            step,
            message,
        } => format!("ended {status:?} at step {step}: {message}"),
    };
    format!("#{:<5} {}", e.seq, sanitize_for_terminal(&text))
}

/// One line for an evaluation: its label and step, each perplexity and each accuracy.
#[must_use]
pub fn eval_line(r: &EvalRecord) -> String {
    let mut parts = vec![format!("eval {} (step {}):", r.label, r.step)];
    parts.extend(
        r.ppl
            .iter()
            .map(|p| format!("{} ppl {:.3}", p.name, p.perplexity)),
    );
    parts.extend(
        r.tasks
            .iter()
            .map(|t| format!("{} acc {:.3}", t.name, t.acc)),
    );
    parts.join("  ")
}

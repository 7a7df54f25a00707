//! The runs screen: every run with status, progress, last loss, how long it ran and where
//! (this machine, or its Slurm job and node).

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Span;
use ratatui::widgets::{Cell, Paragraph, Row, StatefulWidget, Table, TableState, Widget};

use super::{clean, duration, panel, state_style};
use crate::tui::app::App;
use crate::tui::theme::Theme;

pub fn render(app: &App, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let block = panel("runs", theme, true);
    if app.runs.is_empty() {
        Paragraph::new(
            "No runs yet.\n\nOn the experiments screen (1), t trains the selected experiment.",
        )
        .style(theme.fg("dim"))
        .block(block)
        .render(area, buf);
        return;
    }
    // Run ids are shown whole (a cut id is ambiguous: many share their date prefix); on a
    // narrow screen the other columns go instead, the note first, then the experiment, the
    // loss and the time.
    let id_w = app
        .runs
        .iter()
        .map(|r| clean(&r.id).chars().count())
        .max()
        .unwrap_or(3)
        + 2;
    let room = usize::from(area.width.saturating_sub(2));
    // (header, width, priority: lower goes first when room is short).
    // Where runs run: a column only once a run is on Slurm (its job and node, whole).
    let where_w = if app.runs.iter().any(|r| r.slurm_job.is_some()) {
        app.runs
            .iter()
            .map(|r| clean(&r.location()).chars().count())
            .max()
            .unwrap_or(5)
            .clamp(5, 32)
            + 1
    } else {
        0
    };
    let optional: [(&str, usize, u8); 6] = [
        ("experiment", 12, 1),
        ("step", 11, 5),
        ("loss", 8, 2),
        ("ran", 8, 4),
        ("where", where_w, 3),
        ("", 12, 0),
    ];
    let fixed = id_w + 1 + 9 + 1;
    let mut shown: Vec<bool> = optional.iter().map(|(_, w, _)| *w > 0).collect();
    let used = |shown: &[bool]| -> usize {
        fixed
            + optional
                .iter()
                .zip(shown)
                .filter(|(_, s)| **s)
                .map(|((_, w, _), _)| w + 1)
                .sum::<usize>()
    };
    for priority in 0..=5 {
        if used(&shown) <= room {
            break;
        }
        for (i, (_, _, p)) in optional.iter().enumerate() {
            if *p == priority {
                shown[i] = false;
            }
        }
    }
    let rows: Vec<Row> = app
        .runs
        .iter()
        .map(|r| {
            let overlay = if app.overlay.contains(&r.id) {
                "◆ "
            } else {
                "  "
            };
            let loss = r
                .last_loss
                .map_or_else(|| "—".to_string(), |l| format!("{l:.4}"));
            let mut note = r.problem.as_deref().map(clean).unwrap_or_default();
            if r.status == crate::runner::RunState::Lost && note.is_empty() {
                note = "worker died: r resumes from the newest checkpoint".into();
            }
            let optional_cells = [
                Cell::from(clean(&r.experiment)),
                Cell::from(format!("{}/{}", r.step, r.total_steps)),
                Cell::from(loss),
                Cell::from(r.shown_secs().map_or_else(|| "—".to_string(), duration)),
                Cell::from(Span::styled(
                    clean(&r.location()),
                    theme.fg(if r.slurm_job.is_some() {
                        "accent"
                    } else {
                        "dim"
                    }),
                )),
                Cell::from(Span::styled(note, theme.fg("error"))),
            ];
            let mut cells = vec![
                Cell::from(format!("{overlay}{}", clean(&r.id))),
                Cell::from(Span::styled(
                    r.status.to_string(),
                    state_style(theme, r.status),
                )),
            ];
            cells.extend(
                optional_cells
                    .into_iter()
                    .zip(&shown)
                    .filter(|(_, s)| **s)
                    .map(|(c, _)| c),
            );
            Row::new(cells).style(theme.fg("text"))
        })
        .collect();
    let mut widths = vec![
        Constraint::Length(u16::try_from(id_w).unwrap_or(u16::MAX)),
        Constraint::Length(9),
    ];
    let mut header = vec!["run", "status"];
    for ((name, w, _), s) in optional.iter().zip(&shown) {
        if *s {
            header.push(name);
            widths.push(if name.is_empty() {
                Constraint::Min(u16::try_from(*w).unwrap_or(12))
            } else {
                Constraint::Length(u16::try_from(*w).unwrap_or(8))
            });
        }
    }
    let table = Table::new(rows, widths)
        .header(Row::new(header).style(theme.fg("accent")))
        .block(block)
        .row_highlight_style(theme.selection());
    let mut state = TableState::default().with_selected(Some(app.selected_run));
    StatefulWidget::render(table, area, buf, &mut state);
}

//! The runs screen: every run with status, progress, last loss and age.

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
            Row::new(vec![
                Cell::from(format!("{overlay}{}", clean(&r.id))),
                Cell::from(clean(&r.experiment)),
                Cell::from(Span::styled(
                    r.status.to_string(),
                    state_style(theme, r.status),
                )),
                Cell::from(format!("{}/{}", r.step, r.total_steps)),
                Cell::from(loss),
                Cell::from(duration(r.age_secs)),
                Cell::from(Span::styled(note, theme.fg("error"))),
            ])
            .style(theme.fg("text"))
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(36),
            Constraint::Length(20),
            Constraint::Length(9),
            Constraint::Length(11),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new(["run", "experiment", "status", "step", "loss", "age", ""])
            .style(theme.fg("accent")),
    )
    .block(block)
    .row_highlight_style(theme.selection());
    let mut state = TableState::default().with_selected(Some(app.selected_run));
    StatefulWidget::render(table, area, buf, &mut state);
}

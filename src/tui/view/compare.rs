//! The compare screen: every run as a row, its hyperparameters and latest metrics as columns;
//! the highlighted column is the one `enter` sorts by, the run id always stays in view and the
//! other columns scroll to keep the highlighted one on screen.

use std::fmt::Write as _;

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::Modifier;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, StatefulWidget, Table, TableState, Widget};

use super::{clean, panel};
use crate::tui::app::App;
use crate::tui::keymap::{Action, Context};
use crate::tui::theme::Theme;

pub fn render(app: &App, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let view = &app.compare;
    let rows = view.visible();
    let columns = view.columns();
    let key = |action: Action, fallback: &str| {
        app.keymap
            .keys_of(Context::Compare, action, fallback)
            .split('/')
            .next()
            .unwrap_or(fallback)
            .to_string()
    };
    let mut title = format!("compare runs ({} of {})", rows.len(), view.rows.len());
    if !view.filter.is_empty() {
        let _ = write!(title, " /{}", clean(&view.filter));
    }
    if let Some((column, descending)) = &view.sort {
        let _ = write!(
            title,
            " — by {} {}",
            clean(column),
            if *descending { "▼" } else { "▲" }
        );
    }
    let block = panel(&title, theme, true);
    if rows.is_empty() {
        let text = if view.rows.is_empty() {
            "No runs to compare yet.\n\nOn the experiments screen (1), t trains the selected experiment.".to_string()
        } else {
            format!(
                "No run matches the filter {:?} ({} clears it).",
                view.filter,
                app.keymap.keys_of(Context::Compare, Action::Back, "esc")
            )
        };
        Paragraph::new(text)
            .style(theme.fg("dim"))
            .block(block)
            .render(area, buf);
        return;
    }
    // Column widths: the widest cell or header, capped.
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| clean(&r.cell(c).show(c))).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|row| row[i].chars().count())
                .chain([c.chars().count() + 2])
                .max()
                .unwrap_or(4)
                .min(28)
        })
        .collect();
    // The run column (0) always; then from `first` as many as fit, `first` chosen so that
    // the highlighted column is among them.
    let room = usize::from(area.width.saturating_sub(2));
    let fits = |first: usize| -> Vec<usize> {
        let mut shown = vec![0];
        let mut used = widths[0] + 2;
        for (i, width) in widths.iter().enumerate().skip(first.max(1)) {
            if used + width + 1 > room {
                break;
            }
            used += width + 1;
            shown.push(i);
        }
        shown
    };
    let mut first = 1;
    let mut shown = fits(first);
    while view.column > 0 && !shown.contains(&view.column) && first < columns.len() {
        first += 1;
        shown = fits(first);
    }
    let header = Row::new(shown.iter().map(|&i| {
        let name = &columns[i];
        let arrow = match &view.sort {
            Some((c, true)) if c == name => " ▼",
            Some((c, false)) if c == name => " ▲",
            _ => "",
        };
        let style = if i == view.column {
            theme.selection()
        } else {
            theme.fg("accent")
        };
        Cell::from(Span::styled(format!("{}{arrow}", clean(name)), style))
    }));
    let table_rows: Vec<Row> = rows
        .iter()
        .zip(&cells)
        .map(|(r, row)| {
            let marked = view.marked.as_ref() == Some(&r.run);
            Row::new(shown.iter().map(|&i| {
                let text = if i == 0 {
                    format!("{}{}", if marked { "● " } else { "  " }, row[0])
                } else {
                    row[i].clone()
                };
                let style = if i == 0 && marked {
                    theme.fg("accent").add_modifier(Modifier::BOLD)
                } else if columns[i] == "status" {
                    super::state_style(theme, r.status)
                } else {
                    theme.fg("text")
                };
                Cell::from(Span::styled(text, style))
            }))
        })
        .collect();
    let constraints: Vec<Constraint> = shown
        .iter()
        .map(|&i| {
            let extra = if i == 0 { 2 } else { 0 };
            Constraint::Length(u16::try_from(widths[i] + extra).unwrap_or(u16::MAX))
        })
        .collect();
    let hidden = columns.len() - shown.len();
    let table = Table::new(table_rows, constraints)
        .header(header)
        .block(if hidden > 0 {
            block.title_bottom(Line::from(Span::styled(
                format!(
                    " {hidden} more columns: {}/{} ",
                    key(Action::ColumnLeft, "h"),
                    key(Action::ColumnRight, "l")
                ),
                theme.fg("dim"),
            )))
        } else {
            block
        })
        .row_highlight_style(theme.selection());
    let mut state = TableState::default().with_selected(Some(view.selected));
    StatefulWidget::render(table, area, buf, &mut state);
}

//! The study screen: one corpus of a study at a time, its comparison table (the base model, then
//! each strategy's metrics as mean ± sd over seeds) and each strategy's loss curve (mean over its
//! seeds) overlaid.

use std::collections::BTreeMap;

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Modifier;
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Cell, Dataset, GraphType, Paragraph, Row, StatefulWidget, Table, TableState, Widget, Wrap,
};

use super::{clean, loss_axes, panel, y_bounds};
use crate::tui::app::{App, StudyView};
use crate::tui::theme::Theme;

/// Colours of the strategies' curves, in strategy order.
const CURVE_ROLES: [&str; 6] = ["accent", "ok", "warning", "new_block", "error", "running"];

pub fn render(app: &App, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let Some(study) = &app.study else {
        Paragraph::new(
            "No study open.\n\n:study NAME opens a study run with `slayer study run FILE` \
             (its runs are under <data>/studies/NAME).",
        )
        .wrap(Wrap { trim: true })
        .style(theme.fg("dim"))
        .block(panel("study", theme, true))
        .render(area, buf);
        return;
    };
    let Some((corpus, table)) = study.tables.get(app.study_corpus) else {
        Paragraph::new("This study has no corpus.")
            .style(theme.fg("dim"))
            .block(panel("study", theme, true))
            .render(area, buf);
        return;
    };
    let table_height = (table.rows.len() as u16 + 3).min(area.height.saturating_sub(8));
    let [header, table_area, chart_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(table_height),
        Constraint::Min(5),
    ])
    .areas(area);
    let corpora = study.tables.iter().enumerate().flat_map(|(i, (name, _))| {
        let style = if i == app.study_corpus {
            theme.selection()
        } else {
            theme.fg("dim")
        };
        [Span::raw(" "), Span::styled(clean(name), style)]
    });
    let mut spans = vec![
        Span::styled(format!(" {} ", clean(&study.name)), theme.fg("accent")),
        Span::styled("corpus", theme.fg("dim")),
    ];
    spans.extend(corpora);
    spans.push(Span::styled(
        format!("   {} of {} cells have runs", study.runs.len(), study.cells),
        theme.fg("dim"),
    ));
    Paragraph::new(Line::from(spans)).render(header, buf);
    comparison_table(app, theme, table, table_area, buf);
    loss_curves(app, study, corpus, theme, chart_area, buf);
}

fn comparison_table(
    app: &App,
    theme: &Theme,
    table: &crate::study::Table,
    area: Rect,
    buf: &mut Buffer,
) {
    let width = |i: usize| {
        std::iter::once(&table.header)
            .chain(&table.rows)
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(0) as u16
    };
    let widths: Vec<Constraint> = (0..table.header.len())
        .map(|i| Constraint::Length(width(i)))
        .collect();
    // The base model's row (when evaluated) comes first and is not a strategy.
    let offset = usize::from(
        table
            .rows
            .first()
            .and_then(|r| r.first())
            .is_some_and(|c| c == "base model"),
    );
    let rows: Vec<Row> = table
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if i < offset {
                return Row::new(r.iter().map(|c| Cell::from(clean(c)))).style(theme.fg("dim"));
            }
            // The strategy's name in its curve's colour: the chart's legend at any width.
            let colour = theme.fg(CURVE_ROLES[(i - offset) % CURVE_ROLES.len()]);
            Row::new(r.iter().enumerate().map(|(j, c)| {
                let cell = Cell::from(clean(c));
                if j == 0 { cell.style(colour) } else { cell }
            }))
            .style(theme.fg("text"))
        })
        .collect();
    let widget = Table::new(rows, widths)
        .header(Row::new(table.header.iter().map(|h| clean(h))).style(theme.fg("accent")))
        .column_spacing(2)
        .block(panel(
            "comparison (after training; mean ± sd over seeds)",
            theme,
            true,
        ))
        .row_highlight_style(theme.selection());
    let mut state = TableState::default().with_selected(Some(app.study_row + offset));
    StatefulWidget::render(widget, area, buf, &mut state);
}

/// A strategy's loss at each step, averaged over the seeds that logged it.
fn mean_loss(app: &App, runs: &[&str], log: bool) -> Vec<(f64, f64)> {
    let mut sums: BTreeMap<u64, (f64, usize)> = BTreeMap::new();
    for data in runs.iter().filter_map(|id| app.run_data.get(*id)) {
        for s in data.series.steps.iter().filter(|s| s.loss.is_finite()) {
            let e = sums.entry(s.step).or_insert((0.0, 0));
            e.0 += s.loss;
            e.1 += 1;
        }
    }
    sums.into_iter()
        .map(|(step, (sum, n))| {
            let mean = sum / n as f64;
            (
                step as f64,
                if log { mean.max(1e-12).log10() } else { mean },
            )
        })
        .collect()
}

fn loss_curves(
    app: &App,
    study: &StudyView,
    corpus: &str,
    theme: &Theme,
    area: Rect,
    buf: &mut Buffer,
) {
    let log = app.monitor.log_y;
    let curves: Vec<(String, Vec<(f64, f64)>)> = study
        .strategies
        .iter()
        .map(|s| (s.clone(), mean_loss(app, &study.runs_of(corpus, s), log)))
        .collect();
    let points = || curves.iter().flat_map(|(_, p)| p.iter());
    if points().next().is_none() {
        Paragraph::new(format!("No training steps on {} yet.", clean(corpus)))
            .style(theme.fg("dim"))
            .block(panel("training loss", theme, false))
            .render(area, buf);
        return;
    }
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let y = y_bounds(points().map(|p| p.1));
    let marker = if app.plain_glyphs {
        Marker::Dot
    } else {
        Marker::Braille
    };
    let datasets: Vec<Dataset> = curves
        .iter()
        .enumerate()
        .map(|(i, (name, pts))| {
            let mut style = theme.fg(CURVE_ROLES[i % CURVE_ROLES.len()]);
            if i == app.study_row {
                style = style.add_modifier(Modifier::BOLD);
            }
            Dataset::default()
                .name(clean(name))
                .marker(marker)
                .graph_type(GraphType::Line)
                .style(style)
                .data(pts)
        })
        .collect();
    let title = format!(
        "training loss on {}, mean over seeds{}",
        clean(corpus),
        if log { " (log)" } else { "" }
    );
    let entries: Vec<(&str, String, ratatui::style::Style)> = curves
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            (
                "━",
                clean(name),
                theme.fg(CURVE_ROLES[i % CURVE_ROLES.len()]),
            )
        })
        .collect();
    loss_axes(
        datasets,
        &title,
        super::legend(&entries),
        theme,
        false,
        [0.0, x_max],
        y,
        log,
        area.width,
    )
    .render(area, buf);
}

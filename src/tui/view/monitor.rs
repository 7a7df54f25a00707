//! The run monitor: progress and ETA, the loss curve (raw, smoothed, evaluation points, overlaid
//! runs), the layers × steps heatmap of per-block gradient norm (or update ratio), the evaluation
//! table (base, step 0, latest) and the log tail with warnings.

use std::fmt::Write as _;

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Dataset, GraphType, Paragraph, Widget, Wrap};

use super::{clean, duration, loss_axes, panel, y_bounds};
use crate::tui::app::App;
use crate::tui::keymap::{Action, Context};
use crate::tui::run_data::RunData;
use crate::tui::theme::{ColorDepth, Theme};

pub fn render(app: &App, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let data = app.monitored.as_ref().and_then(|id| app.run_data.get(id));
    let Some(data) = data else {
        Paragraph::new("No run selected.\n\nOn the runs screen (2), enter opens a run here.")
            .style(theme.fg("dim"))
            .block(panel("monitor", theme, true))
            .render(area, buf);
        return;
    };
    let row = app.runs.iter().find(|r| r.id == data.id);
    let [header, main] = Layout::vertical([Constraint::Length(2), Constraint::Min(8)]).areas(area);
    let state = row.map_or_else(|| "?".to_string(), |r| r.status.to_string());
    let (rate, eta) = data.rate_and_eta().unwrap_or((0.0, f64::NAN));
    let last = data.series.steps.last();
    let head = vec![
        Line::from(vec![
            Span::styled(format!(" {} ", clean(&data.id)), theme.fg("accent")),
            Span::styled(
                format!("{} ", clean(&data.run.experiment)),
                theme.fg("text"),
            ),
            Span::styled(
                state.clone(),
                row.map_or(theme.fg("dim"), |r| super::state_style(theme, r.status)),
            ),
        ]),
        Line::from(Span::styled(
            format!(
                " step {}/{}  loss {}  lr {}  {} tok/s  {:.2} steps/s  ETA {}",
                data.last_step(),
                data.run.total_steps,
                last.map_or("—".into(), |s| format!("{:.4}", s.loss)),
                last.map_or("—".into(), |s| format!("{:.2e}", s.lr)),
                last.map_or("—".into(), |s| format!("{:.0}", s.tokens_per_sec)),
                rate,
                if eta.is_finite() && state == "running" {
                    duration(eta)
                } else {
                    "—".into()
                },
            ),
            theme.fg("dim"),
        )),
    ];
    Paragraph::new(head).render(header, buf);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(58), Constraint::Percentage(42)]).areas(main);
    let [chart_area, log_area] =
        Layout::vertical([Constraint::Percentage(62), Constraint::Percentage(38)]).areas(left);
    let eval_rows = eval_rows(data).len() as u16;
    let sample_lines = sample_lines(data, theme);
    // The samples take what the heatmap can spare (it keeps at least 5 rows).
    let samples_height = if sample_lines.is_empty() {
        0
    } else {
        (sample_lines.len() as u16 + 2).min(right.height.saturating_sub(eval_rows + 3 + 5))
    };
    let [heat_area, eval_area, samples_area] = Layout::vertical([
        Constraint::Min(5),
        Constraint::Length((eval_rows + 3).min(12)),
        Constraint::Length(samples_height),
    ])
    .areas(right);
    loss_chart(app, data, theme, chart_area, buf);
    heatmap(app, data, theme, heat_area, buf);
    eval_table(data, theme, eval_area, buf);
    if samples_height > 2 {
        Paragraph::new(sample_lines)
            .wrap(Wrap { trim: false })
            .block(panel("samples (greedy)", theme, false))
            .render(samples_area, buf);
    }
    log_tail(app, data, theme, log_area, buf);
}

/// The sample generations of the newest evaluation beside the base model's (or the first
/// evaluation's), prompt by prompt, with the expected answer where the probe has one.
fn sample_lines<'a>(data: &RunData, theme: &Theme) -> Vec<Line<'a>> {
    let Some(newest) = data.evals.iter().rev().find(|e| !e.samples.is_empty()) else {
        return Vec::new();
    };
    let first = data
        .evals
        .iter()
        .find(|e| !e.samples.is_empty())
        .filter(|e| e.label != newest.label || e.step != newest.step);
    let label = |e: &crate::core::events::EvalRecord| match e.label.as_str() {
        "base" | "expanded" => e.label.clone(),
        _ => format!("step {}", e.step),
    };
    let mut lines = Vec::new();
    for (i, sample) in newest.samples.iter().enumerate() {
        lines.push(Line::from(Span::styled(
            format!("› {}", clean(&sample.prompt)),
            theme.fg("accent"),
        )));
        if let Some(before) = first.and_then(|e| e.samples.get(i).map(|s| (e, s))) {
            lines.push(Line::from(vec![
                Span::styled(format!("  {}: ", label(before.0)), theme.fg("dim")),
                Span::styled(clean(&before.1.text), theme.fg("dim")),
            ]));
        }
        let right = sample
            .expected
            .as_ref()
            .is_some_and(|x| sample.text.trim_start().starts_with(x.trim()));
        lines.push(Line::from(vec![
            Span::styled(format!("  {}: ", label(newest)), theme.fg("dim")),
            Span::styled(
                clean(&sample.text),
                theme.fg(if right { "ok" } else { "text" }),
            ),
        ]));
        if let Some(expected) = &sample.expected {
            lines.push(Line::from(Span::styled(
                format!("  expected: {}", clean(expected)),
                theme.fg("dim"),
            )));
        }
    }
    lines
}

fn transform(v: f64, log: bool) -> f64 {
    if log { v.max(1e-12).log10() } else { v }
}

fn loss_chart(app: &App, data: &RunData, theme: &Theme, area: Rect, buf: &mut Buffer) {
    // Without Braille, raw and smoothed loss get different glyphs (dots and bars).
    let (marker, smooth_marker, raw_glyph, smooth_glyph) = if app.plain_glyphs {
        (Marker::Dot, Marker::Bar, "•", "▄")
    } else {
        (Marker::Braille, Marker::Braille, "⠒", "━")
    };
    let log = app.monitor.log_y;
    let total = data.run.total_steps.max(data.last_step()).max(1) as f64;
    let x_min = if app.monitor.recent {
        (data.last_step() as f64 - (total / 5.0).max(50.0)).max(0.0)
    } else {
        0.0
    };
    let keep = |x: f64| x >= x_min;
    let points = |d: &RunData| -> Vec<(f64, f64)> {
        d.series
            .steps
            .iter()
            .filter(|s| s.loss.is_finite() && keep(s.step as f64))
            .map(|s| (s.step as f64, transform(s.loss, log)))
            .collect()
    };
    let raw = points(data);
    let smooth: Vec<(f64, f64)> = data
        .smoothed_loss(0.1)
        .into_iter()
        .filter(|p| keep(p.0))
        .map(|(x, y)| (x, transform(y, log)))
        .collect();
    // Evaluation points: the loss at each evaluated step.
    let evals: Vec<(f64, f64)> = data
        .evals
        .iter()
        .filter_map(|e| {
            let s = data.series.steps.iter().find(|s| s.step == e.step)?;
            keep(s.step as f64).then(|| (s.step as f64, transform(s.loss, log)))
        })
        .collect();
    let overlays: Vec<(String, Vec<(f64, f64)>)> = app
        .overlay
        .iter()
        .filter(|id| **id != data.id)
        .filter_map(|id| app.run_data.get(id).map(|d| (id.clone(), points(d))))
        .collect();
    let all_y = raw
        .iter()
        .chain(overlays.iter().flat_map(|o| o.1.iter()))
        .map(|p| p.1);
    let y = y_bounds(all_y);
    let mut datasets = vec![
        Dataset::default()
            .name("loss")
            .marker(marker)
            .graph_type(GraphType::Scatter)
            .style(theme.fg("chart_raw"))
            .data(&raw),
        Dataset::default()
            .name("smoothed")
            .marker(smooth_marker)
            .graph_type(GraphType::Line)
            .style(theme.fg("chart_smooth"))
            .data(&smooth),
        Dataset::default()
            .name("eval")
            .marker(Marker::Block)
            .graph_type(GraphType::Scatter)
            .style(theme.fg("chart_eval"))
            .data(&evals),
    ];
    for (i, (id, pts)) in overlays.iter().enumerate() {
        let role = ["accent", "ok", "warning", "new_block"][i % 4];
        datasets.push(
            Dataset::default()
                .name(clean(id.rsplit('-').next().unwrap_or(id)))
                .marker(marker)
                .graph_type(GraphType::Line)
                .style(theme.fg(role))
                .data(pts),
        );
    }
    let x_max = if app.monitor.recent {
        data.last_step().max(1) as f64
    } else {
        total
    };
    // The cursor: a vertical line at its step, and what the curves read there in the title.
    let cursor_line: Vec<(f64, f64)> = app
        .monitor
        .cursor
        .map(|c| vec![(c as f64, y[0]), (c as f64, y[1])])
        .unwrap_or_default();
    if !cursor_line.is_empty() {
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(theme.fg("accent"))
                .data(&cursor_line),
        );
    }
    let mut title = format!(
        "loss{}{}",
        if log { " (log)" } else { "" },
        if app.monitor.recent {
            " — recent"
        } else {
            ""
        }
    );
    if let Some(c) = app.monitor.cursor {
        let _ = write!(title, " — step {c}: ");
        match data.series.steps.iter().find(|s| s.step == c) {
            Some(s) => {
                let smoothed = data
                    .smoothed_loss(0.1)
                    .into_iter()
                    .find(|p| p.0 as u64 == c)
                    .map_or_else(String::new, |p| format!(", smoothed {:.4}", p.1));
                let _ = write!(title, "loss {:.4}{smoothed}, lr {:.2e}", s.loss, s.lr);
            }
            None => title.push_str("no step logged"),
        }
    }
    let mut entries = vec![
        (raw_glyph, "raw".to_string(), theme.fg("chart_raw")),
        (
            smooth_glyph,
            "smoothed".to_string(),
            theme.fg("chart_smooth"),
        ),
        ("█", "at evaluations".to_string(), theme.fg("chart_eval")),
    ];
    for (i, (id, _)) in overlays.iter().enumerate() {
        let role = ["accent", "ok", "warning", "new_block"][i % 4];
        entries.push((
            "━",
            clean(id.rsplit('-').next().unwrap_or(id)),
            theme.fg(role),
        ));
    }
    loss_axes(
        datasets,
        &title,
        super::legend(&entries),
        theme,
        true,
        [x_min, x_max],
        y,
        log,
        area.width,
    )
    .render(area, buf);
}

/// Rows of the heatmap: every final block when they fit, else the trainable ones.
fn heatmap(app: &App, data: &RunData, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let metric = if app.monitor.update_ratio {
        "update ratio"
    } else {
        "grad norm"
    };
    let value = |p: &(u64, f64, f64)| if app.monitor.update_ratio { p.2 } else { p.1 };
    let positive: Vec<f64> = data
        .series
        .blocks
        .values()
        .flatten()
        .map(value)
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let lo = positive.iter().copied().fold(f64::INFINITY, f64::min).ln();
    let hi = positive
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .ln();
    let plain = theme.depth == ColorDepth::None;
    // The cell under the cursor: a block (a row with statistics) at the cursor's step.
    let cursor_block = app.monitor.cursor.and(
        data.series
            .blocks
            .keys()
            .nth(app.monitor.cursor_row)
            .copied(),
    );
    let mut title = format!("blocks × steps: {metric}");
    if let (Some(step), Some(b)) = (app.monitor.cursor, cursor_block) {
        let v = data
            .series
            .blocks
            .get(&b)
            .and_then(|pts| pts.iter().find(|p| p.0 == step))
            .map(value);
        let _ = write!(
            title,
            " — block {b}, step {step}: {}",
            v.map_or_else(|| "—".to_string(), |v| format!("{v:.4}"))
        );
    }
    // The colour scale, with the values at its ends (log-scaled between them).
    let mut scale = vec![Span::styled(" low ", theme.fg("dim"))];
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        if plain {
            let shade = [" ", "░", "▒", "▓", "█"][((t * 4.0) as usize).min(4)];
            scale.push(Span::raw(shade));
        } else {
            scale.push(Span::styled(
                "█",
                ratatui::style::Style::default().fg(theme.heat(t)),
            ));
        }
    }
    if lo.is_finite() && hi.is_finite() {
        scale.push(Span::styled(
            format!(" high  {:.3} … {:.3} (log scale) ", lo.exp(), hi.exp()),
            theme.fg("dim"),
        ));
    }
    let block = panel(&title, theme, false).title_bottom(Line::from(scale));
    let inner = block.inner(area);
    block.render(area, buf);
    if inner.height == 0 || inner.width < 8 {
        return;
    }
    let mut rows: Vec<(String, &str, Option<usize>)> = data
        .layers()
        .iter()
        .map(|l| {
            let tag = if l.new { "new" } else { "   " };
            (
                format!("{:>3}{tag}", l.index),
                if l.new { "new_block" } else { "original_block" },
                Some(l.index),
            )
        })
        .collect();
    if !data.run.plan.pruned.is_empty() {
        rows.push(("pruned".to_string(), "pruned_block", None));
    }
    if rows.len() > inner.height as usize {
        rows.retain(|r| r.2.is_some_and(|i| data.series.blocks.contains_key(&i)));
    }
    if rows.is_empty() {
        Paragraph::new("no per-block statistics yet")
            .style(theme.fg("dim"))
            .render(inner, buf);
        return;
    }
    let label_w = 7u16;
    let last = data.last_step().max(1);
    let total = data.run.total_steps.max(last);
    // One column per step when they fit, else buckets of steps.
    let cols = ((inner.width - label_w) as usize).min(total as usize);
    let column_of =
        |step: u64| ((step.saturating_sub(1)) as usize * cols / total as usize).min(cols - 1);
    let cursor_cell = app.monitor.cursor.map(column_of).zip(cursor_block);
    for (r, (label, role, block_index)) in rows.iter().take(inner.height as usize).enumerate() {
        let y = inner.y + r as u16;
        buf.set_string(inner.x, y, label, theme.fg(role));
        let Some(points) = block_index.and_then(|i| data.series.blocks.get(&i)) else {
            // Frozen blocks have no statistics; pruned ones are a gap.
            let filler = if block_index.is_none() { "░" } else { "·" };
            buf.set_string(
                inner.x + label_w,
                y,
                filler.repeat(cols),
                theme.fg("pruned_block"),
            );
            continue;
        };
        let mut sums = vec![(0.0f64, 0usize); cols];
        for p in points {
            let c = ((p.0.saturating_sub(1)) as usize * cols / total as usize).min(cols - 1);
            let v = value(p);
            if v.is_finite() {
                sums[c].0 += v;
                sums[c].1 += 1;
            }
        }
        for (c, (sum, n)) in sums.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let v = sum / *n as f64;
            let t = if hi > lo {
                (v.max(1e-30).ln() - lo) / (hi - lo)
            } else {
                0.5
            };
            let x = inner.x + label_w + c as u16;
            if cursor_cell.is_some_and(|(cc, b)| cc == c && Some(b) == *block_index) {
                buf.set_string(
                    x,
                    y,
                    "◆",
                    theme
                        .fg("accent")
                        .add_modifier(ratatui::style::Modifier::REVERSED),
                );
                continue;
            }
            if plain {
                let shade = [" ", "░", "▒", "▓", "█"][((t * 4.0).round() as usize).min(4)];
                buf.set_string(x, y, shade, ratatui::style::Style::default());
            } else {
                buf.set_string(
                    x,
                    y,
                    "█",
                    ratatui::style::Style::default().fg(theme.heat(t)),
                );
            }
        }
    }
}

/// (metric, value per evaluation column) for base, step 0 and the latest evaluation.
fn eval_rows(data: &RunData) -> Vec<(String, Vec<String>)> {
    let cols = eval_columns(data);
    let mut names: Vec<String> = Vec::new();
    for e in &cols {
        for p in &e.ppl {
            let n = format!("{} ppl", p.name);
            if !names.contains(&n) {
                names.push(n);
            }
        }
        for t in &e.tasks {
            let n = format!("{} acc", t.name);
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    names
        .into_iter()
        .map(|n| {
            let vals = cols
                .iter()
                .map(|e| {
                    e.ppl
                        .iter()
                        .find(|p| format!("{} ppl", p.name) == n)
                        .map(|p| format!("{:.2}", p.perplexity))
                        .or_else(|| {
                            e.tasks
                                .iter()
                                .find(|t| format!("{} acc", t.name) == n)
                                .map(|t| format!("{:.3}", t.acc))
                        })
                        .unwrap_or_else(|| "—".into())
                })
                .collect();
            (n, vals)
        })
        .collect()
}

fn eval_columns(data: &RunData) -> Vec<&crate::core::events::EvalRecord> {
    let mut cols = Vec::new();
    if let Some(b) = data.evals.iter().find(|e| e.label == "base") {
        cols.push(b);
    }
    if let Some(x) = data.evals.iter().find(|e| e.label == "expanded") {
        cols.push(x);
    }
    if let Some(last) = data
        .evals
        .iter()
        .rev()
        .find(|e| e.label != "base" && e.label != "expanded")
    {
        cols.push(last);
    }
    cols
}

fn eval_table(data: &RunData, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let cols = eval_columns(data);
    if cols.is_empty() {
        Paragraph::new("no evaluation yet")
            .style(theme.fg("dim"))
            .block(panel("evaluation", theme, false))
            .render(area, buf);
        return;
    }
    // Values take 7 to 9 columns each; names get the rest (at least 6).
    let room = area.width.saturating_sub(2) as usize;
    let value_w = (room.saturating_sub(6) / cols.len().max(1)).clamp(7, 9);
    let name_w = room.saturating_sub(value_w * cols.len()).max(6);
    let header = cols.iter().fold(String::new(), |mut out, e| {
        let label = match e.label.as_str() {
            "expanded" => "step 0".to_string(),
            "base" => "base".to_string(),
            _ => format!("step {}", e.step),
        };
        let _ = write!(out, "{label:>value_w$}");
        out
    });
    let mut lines = vec![Line::from(Span::styled(
        format!("{:<name_w$}{header}", ""),
        theme.fg("accent"),
    ))];
    for (name, vals) in eval_rows(data) {
        let name: String = clean(&name).chars().take(name_w).collect();
        let vals = vals.iter().fold(String::new(), |mut out, v| {
            let _ = write!(out, "{v:>value_w$}");
            out
        });
        lines.push(Line::from(Span::styled(
            format!("{name:<name_w$}{vals}"),
            theme.fg("text"),
        )));
    }
    Paragraph::new(lines)
        .block(panel("evaluation", theme, false))
        .render(area, buf);
}

/// The log pane: the problem and the last warnings on top, then log lines ending at the
/// scrolled-to line (the newest when following), counted by the rows they wrap to, so the
/// newest line is never pushed out of view; lines matching the search are marked.
fn log_tail(app: &App, data: &RunData, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let height = area.height.saturating_sub(2) as usize;
    let width = area.width.saturating_sub(2).max(1) as usize;
    let rows_of = |line: &Line| line.width().div_ceil(width).max(1);
    let mut top: Vec<Line> = Vec::new();
    if let Some(p) = &data.problem {
        top.push(Line::from(Span::styled(clean(p), theme.fg("error"))));
    }
    for w in data.run.warnings.iter().rev().take(2) {
        top.push(Line::from(Span::styled(
            format!("warning: {}", clean(w)),
            theme.fg("warning"),
        )));
    }
    // The pinned lines never take more than half the pane.
    let mut pinned_rows = 0;
    top.retain(|l| {
        pinned_rows += rows_of(l);
        pinned_rows <= height / 2
    });
    let mut room = height.saturating_sub(top.iter().map(rows_of).sum());
    let view = &app.log_view;
    let needle = view.search.to_lowercase();
    let len = data.log.len();
    let end = len.saturating_sub(view.scroll.min(len.saturating_sub(1)));
    let mut shown: Vec<Line> = Vec::new();
    for line in data.log.range(..end).rev() {
        let hit = !needle.is_empty() && line.to_lowercase().contains(&needle);
        let style = if hit {
            theme.selection()
        } else {
            theme.fg("dim")
        };
        let line = Line::from(Span::styled(clean(line), style));
        let rows = rows_of(&line);
        if rows > room {
            break;
        }
        room -= rows;
        shown.push(line);
    }
    shown.reverse();
    let mut lines = top;
    lines.extend(shown);
    let mut title = String::from("log");
    if !view.search.is_empty() {
        let hits = data
            .log
            .iter()
            .filter(|l| l.to_lowercase().contains(&needle))
            .count();
        let _ = write!(title, " /{} ({hits} lines)", clean(&view.search));
    }
    if view.scroll > 0 && len > 0 {
        let _ = write!(
            title,
            " — {} newer lines below ({} follows)",
            view.scroll.min(len - 1),
            app.keymap
                .keys_of(Context::Monitor, Action::Bottom, "G")
                .split('/')
                .next()
                .unwrap_or("G")
        );
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(panel(&title, theme, false))
        .render(area, buf);
}

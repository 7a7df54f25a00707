//! The plan editor: the experiment text (with line numbers and a marker at every line a
//! diagnostic points to) beside the resolved layer map, totals and the diagnostics.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget, Wrap};

use super::{clean, panel};
use crate::core::plan::{Origin, Severity};
use crate::tui::app::App;
use crate::tui::theme::Theme;

pub fn render(app: &App, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let Some(editor) = &app.editor else {
        return;
    };
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(58), Constraint::Percentage(42)]).areas(area);
    let n_diag = editor.analysis.diagnostics.len().clamp(1, 6) as u16;
    let [text_area, diag_area] =
        Layout::vertical([Constraint::Min(5), Constraint::Length(n_diag + 2)]).areas(left);
    let name = editor
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let title = format!(
        "{}{}",
        clean(&name),
        if editor.dirty() { " [+]" } else { "" }
    );
    let mut editor_widget = editor.textarea.clone();
    editor_widget.set_block(panel(&title, theme, true));
    editor_widget.set_style(theme.fg("text"));
    editor_widget.set_line_number_style(theme.fg("dim"));
    editor_widget.set_cursor_line_style(ratatui::style::Style::default());
    editor_widget.render(text_area, buf);
    // Diagnostic markers in the line-number gutter.
    let (top, _) = editor.textarea.scroll_offset();
    for (line, severity, _) in &editor.analysis.diagnostics {
        let Some(line) = line else { continue };
        let row = (*line as u16).saturating_sub(1).saturating_sub(top);
        if row + 2 < text_area.height {
            let style = theme.fg(if *severity == Severity::Error {
                "error"
            } else {
                "warning"
            });
            buf.set_string(text_area.x + 1, text_area.y + 1 + row, "●", style);
        }
    }
    let diag_lines: Vec<Line> = if editor.analysis.diagnostics.is_empty() {
        vec![Line::from(Span::styled("no problems", theme.fg("ok")))]
    } else {
        editor
            .analysis
            .diagnostics
            .iter()
            .map(|(line, severity, message)| {
                let (role, word) = if *severity == Severity::Error {
                    ("error", "error")
                } else {
                    ("warning", "warning")
                };
                let at = line.map_or_else(String::new, |l| format!("line {l}: "));
                Line::from(vec![
                    Span::styled(format!("{word} "), theme.fg(role)),
                    Span::styled(format!("{at}{}", clean(message)), theme.fg("text")),
                ])
            })
            .collect()
    };
    Paragraph::new(diag_lines)
        .wrap(Wrap { trim: true })
        .block(panel("diagnostics", theme, false))
        .render(diag_area, buf);
    layer_map(app, theme, right, buf);
}

fn layer_map(app: &App, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let Some(editor) = &app.editor else { return };
    let mut lines: Vec<Line> = Vec::new();
    if let Some(t) = &editor.analysis.totals {
        use crate::core::plan::totals::{human_bytes, human_count};
        lines.push(Line::from(vec![
            Span::styled(
                format!(
                    "{} → {} blocks",
                    editor.analysis.map.as_ref().map_or(0, |m| m.base_layers),
                    t.final_layers
                ),
                theme.fg("text"),
            ),
            Span::styled(
                format!("  +{} new  −{} pruned", t.new_blocks, t.pruned_blocks),
                theme.fg("dim"),
            ),
        ]));
        lines.push(Line::from(Span::styled(
            format!(
                "params {}  trainable {} ({:.1}%)",
                human_count(t.params),
                human_count(t.trainable_params),
                t.trainable_share * 100.0
            ),
            theme.fg("text"),
        )));
        lines.push(Line::from(Span::styled(
            format!(
                "training memory ≈ {} ({}, [train] batch {} × {}{})",
                human_bytes(t.memory.total),
                if t.assumptions.element_bytes == 4 {
                    "f32"
                } else {
                    "bf16"
                },
                t.assumptions.batch,
                t.assumptions.seq_len,
                if t.assumptions.recompute {
                    ", recomputed"
                } else {
                    ""
                }
            ),
            theme.fg("dim"),
        )));
        lines.push(Line::default());
    }
    match &editor.analysis.map {
        None => lines.push(Line::from(Span::styled(
            "no layer map: fix the errors",
            theme.fg("dim"),
        ))),
        Some(map) => {
            for l in &map.layers {
                let (mark, role, what) = match &l.origin {
                    Origin::Original { index } => {
                        ("│", "original_block", format!("original {index}"))
                    }
                    Origin::New { init, .. } => {
                        let src = init
                            .sources()
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("+");
                        ("█", "new_block", format!("new ← {src}"))
                    }
                };
                let mut spans = vec![
                    Span::styled(format!("{:>3} ", l.index), theme.fg("dim")),
                    Span::styled(format!("{mark} "), theme.fg(role)),
                    Span::styled(what, theme.fg(role)),
                ];
                if l.trainable {
                    spans.push(Span::styled("  trains", theme.fg("trainable")));
                }
                lines.push(Line::from(spans));
            }
            if !map.pruned.is_empty() {
                lines.push(Line::from(Span::styled(
                    format!("    ░ pruned {:?}", map.pruned),
                    theme.fg("pruned_block"),
                )));
            }
        }
    }
    Paragraph::new(lines)
        .block(panel("layer map", theme, false))
        .render(area, buf);
}

//! Popups: help (generated from the keymap), confirmations, the template picker, the name
//! prompt, the diff, the reload prompt and errors.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Widget, Wrap};

use super::{clean, panel};
use crate::tui::app::{App, Popup};
use crate::tui::theme::Theme;

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let [h] = Layout::horizontal([Constraint::Length(width.min(area.width))])
        .flex(Flex::Center)
        .areas(area);
    let [v] = Layout::vertical([Constraint::Length(height.min(area.height))])
        .flex(Flex::Center)
        .areas(h);
    v
}

fn choices<'a>(options: &[&'a str], choice: usize, theme: &Theme) -> Line<'a> {
    let mut spans = Vec::new();
    for (i, o) in options.iter().enumerate() {
        spans.push(Span::raw("  "));
        spans.push(Span::styled(
            format!("[ {o} ]"),
            if i == choice {
                theme.selection()
            } else {
                theme.fg("text")
            },
        ));
    }
    Line::from(spans)
}

pub fn render(app: &App, popup: &Popup, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let (title, lines, width, scroll): (String, Vec<Line>, u16, u16) = match popup {
        Popup::Help { scroll } => {
            let mut lines = Vec::new();
            for (context, rows) in app.keymap.help_rows() {
                lines.push(Line::from(Span::styled(
                    context.title().to_string(),
                    theme.fg("accent"),
                )));
                for (keys, description) in rows {
                    lines.push(Line::from(vec![
                        Span::styled(format!("  {keys:<18}"), theme.fg("text")),
                        Span::styled(description.to_string(), theme.fg("dim")),
                    ]));
                }
            }
            ("help — j/k scroll, esc closes".into(), lines, 96, *scroll)
        }
        Popup::ConfirmQuit { running, choice } => (
            "leave slayer".into(),
            vec![
                Line::from(format!(
                    "{running} run{} still running. They keep going without the console.",
                    if *running == 1 { " is" } else { "s are" }
                )),
                Line::default(),
                choices(
                    &["leave them running", "stop them", "cancel"],
                    *choice,
                    theme,
                ),
            ],
            70,
            0,
        ),
        Popup::ConfirmDelete { name, path } => (
            "delete experiment".into(),
            vec![
                Line::from(format!(
                    "Delete {} ({})?",
                    clean(name),
                    clean(&path.display().to_string())
                )),
                Line::from("Its runs stay in the runs directory."),
                Line::default(),
                Line::from(Span::styled(
                    "y deletes, n or esc keeps it",
                    theme.fg("dim"),
                )),
            ],
            70,
            0,
        ),
        Popup::Templates { selected } => {
            let mut lines = vec![Line::from(Span::styled(
                "start from (enter picks):",
                theme.fg("dim"),
            ))];
            for (i, t) in crate::templates::TEMPLATES.iter().enumerate() {
                let d = t.description();
                let first = d.lines().next().unwrap_or_default().to_string();
                let style = if i == *selected {
                    theme.selection()
                } else {
                    theme.fg("text")
                };
                lines.push(Line::from(vec![
                    Span::styled(format!("{:<24}", t.name), style),
                    Span::styled(format!(" {first}"), theme.fg("dim")),
                ]));
            }
            ("new experiment".into(), lines, 100, 0)
        }
        Popup::Name {
            input,
            template,
            from,
        } => {
            let what = match (template, from) {
                (Some(t), _) => format!("from template {t}"),
                (None, Some(f)) => format!("copy of {}", clean(&f.display().to_string())),
                _ => String::new(),
            };
            (
                "name".into(),
                vec![
                    Line::from(Span::styled(what, theme.fg("dim"))),
                    Line::from(vec![
                        Span::styled("name: ", theme.fg("accent")),
                        Span::styled(clean(input), theme.fg("text")),
                        Span::styled("█", theme.fg("accent")),
                    ]),
                    Line::from(Span::styled(
                        "letters, digits, - and _; enter creates",
                        theme.fg("dim"),
                    )),
                ],
                60,
                0,
            )
        }
        Popup::Diff {
            lines: diff,
            scroll,
        } => {
            let lines = diff
                .iter()
                .map(|l| {
                    let role = if l.starts_with('+') {
                        "ok"
                    } else if l.starts_with('-') {
                        "error"
                    } else {
                        "dim"
                    };
                    Line::from(Span::styled(clean(l), theme.fg(role)))
                })
                .collect();
            ("diff: saved → editor".into(), lines, 100, *scroll)
        }
        Popup::ExternalChange { path } => (
            "changed on disk".into(),
            vec![
                Line::from(format!(
                    "{} was changed by another program,",
                    clean(&path.display().to_string())
                )),
                Line::from("and the editor holds unsaved edits."),
                Line::default(),
                Line::from(Span::styled(
                    "r reloads it (drops your edits), k keeps your edits",
                    theme.fg("dim"),
                )),
            ],
            76,
            0,
        ),
        Popup::UnsavedLeave { choice } => (
            "unsaved edits".into(),
            vec![
                Line::from("The plan has unsaved edits."),
                Line::default(),
                choices(&["save", "discard", "stay"], *choice, theme),
            ],
            50,
            0,
        ),
        Popup::Importance { metric, scroll } => match &app.importance {
            None => (
                "importance".into(),
                vec![Line::from("no measurement")],
                60,
                0,
            ),
            Some(v) => {
                let (label, scores) = v.metrics.get(*metric).cloned().unwrap_or_default();
                let max = scores.iter().copied().fold(0.0f64, f64::max);
                let width = 40usize;
                let mut lines = vec![Line::from(Span::styled(
                    format!(
                        "{} — larger = more important; tab next metric, p makes a plan from it",
                        clean(&label)
                    ),
                    theme.fg("dim"),
                ))];
                for (i, s) in scores.iter().enumerate() {
                    let t = if max > 0.0 {
                        (s / max).clamp(0.0, 1.0)
                    } else {
                        0.0
                    };
                    let bar = "█".repeat((t * width as f64).round() as usize);
                    lines.push(Line::from(vec![
                        Span::styled(format!("{i:>4} "), theme.fg("dim")),
                        Span::styled(format!("{bar:<width$}"), theme.fg("accent")),
                        Span::styled(format!(" {s:.4}"), theme.fg("text")),
                    ]));
                }
                (
                    format!("importance: {}", clean(&v.experiment)),
                    lines,
                    70,
                    *scroll,
                )
            }
        },
        Popup::Error { title, message } => (
            clean(title),
            message
                .lines()
                .map(|l| Line::from(Span::styled(clean(l), theme.fg("error"))))
                .collect(),
            76,
            0,
        ),
    };
    let height = (lines.len() as u16 + 2).min(area.height.saturating_sub(2));
    let rect = centered(area, width, height);
    Clear.render(rect, buf);
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .scroll((scroll, 0))
        .block(panel(&title, theme, true))
        .render(rect, buf);
}

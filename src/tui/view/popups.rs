//! Popups: help (generated from the keymap), confirmations, the template picker, the name
//! prompt, the diff, the reload prompt and errors.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Widget, Wrap};

use super::{clean, panel};
use crate::tui::app::{App, JobOutcome, Popup, outcome_lines};
use crate::tui::keymap::{Action, Context};
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

/// The first of the keys `keys_of` lists.
fn first(keys: &str) -> &str {
    keys.split('/').next().unwrap_or(keys)
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
    // Hints name the keys as bound now (keymap.toml included).
    let key = |action: Action, fallback: &str| app.keymap.keys_of(Context::Popup, action, fallback);
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
            (
                format!(
                    "help — {}/{} scroll, {} closes",
                    first(&key(Action::Down, "j")),
                    first(&key(Action::Up, "k")),
                    key(Action::Back, "esc")
                ),
                lines,
                96,
                *scroll,
            )
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
                    format!(
                        "{} deletes, {} or {} keeps it",
                        key(Action::Yes, "y"),
                        key(Action::No, "n"),
                        key(Action::Back, "esc")
                    ),
                    theme.fg("dim"),
                )),
            ],
            70,
            0,
        ),
        Popup::Templates { selected } => {
            let mut lines = vec![Line::from(Span::styled(
                format!("start from ({} picks):", key(Action::Open, "enter")),
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
                        format!(
                            "letters, digits, - and _; {} creates",
                            app.keymap.keys_of(Context::Input, Action::Send, "enter")
                        ),
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
        Popup::Alerts { scroll } => {
            let lines = if app.alerts.is_empty() {
                vec![Line::from(Span::styled(
                    "no alerts: non-finite steps, loss spikes, plateaus and the end of runs show here",
                    theme.fg("dim"),
                ))]
            } else {
                app.alerts
                    .iter()
                    .rev()
                    .map(|(run, alert)| {
                        let role = match alert.severity {
                            crate::runner::alerts::Severity::Problem => "error",
                            crate::runner::alerts::Severity::News => "text",
                        };
                        Line::from(vec![
                            Span::styled(format!("{} ", clean(run)), theme.fg("accent")),
                            Span::styled(clean(&alert.message), theme.fg(role)),
                        ])
                    })
                    .collect()
            };
            (
                format!("alerts ({}, newest first)", app.alerts.len()),
                lines,
                110,
                *scroll,
            )
        }
        Popup::Outcome { scroll } => match &app.outcome {
            None => ("result".into(), vec![Line::from("no result")], 60, 0),
            Some(outcome) => {
                let title = match outcome {
                    JobOutcome::Expanded { experiment, .. } => {
                        format!("expanded {}", clean(experiment))
                    }
                    JobOutcome::Evaluated { run, .. } => format!("evaluation of {}", clean(run)),
                    JobOutcome::Previewed { experiment, .. } => {
                        format!("training data of {}", clean(experiment))
                    }
                };
                let lines = outcome_lines(outcome)
                    .iter()
                    .map(|l| {
                        let role = if l.contains("FAILED") || l.contains("DIFFERENT") {
                            "error"
                        } else if l == "passed" {
                            "ok"
                        } else {
                            "text"
                        };
                        Line::from(Span::styled(clean(l), theme.fg(role)))
                    })
                    .collect();
                (title, lines, 90, *scroll)
            }
        },
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
                    format!(
                        "{} reloads it (drops your edits), {} keeps your edits",
                        key(Action::Yes, "y"),
                        key(Action::No, "n")
                    ),
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
                        "{} — larger = more important; {} next metric, {} makes a plan from it",
                        clean(&label),
                        key(Action::FocusNext, "tab"),
                        key(Action::PlanFromImportance, "p")
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
    // Rows after wrapping, so that the last page is shown whole and never scrolled past.
    let inner = usize::from(width.min(area.width).saturating_sub(2)).max(1);
    let rows: usize = lines.iter().map(|l| l.width().div_ceil(inner).max(1)).sum();
    let rows = u16::try_from(rows).unwrap_or(u16::MAX);
    let height = rows.saturating_add(2).min(area.height.saturating_sub(2));
    let scroll = scroll.min(rows.saturating_sub(height.saturating_sub(2)));
    let rect = centered(area, width, height);
    Clear.render(rect, buf);
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .scroll((scroll, 0))
        .block(panel(&title, theme, true))
        .render(rect, buf);
}

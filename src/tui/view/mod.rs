//! Rendering: reads [`App`] and draws; never changes state. One module per screen, plus popups.
//! Every string from outside (file names, run ids, model output, experiment text) goes through
//! [`clean`] before it reaches a cell.

mod chat;
mod compare;
mod editor;
mod experiments;
mod monitor;
mod popups;
mod runs;
mod study;

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Dataset, Paragraph, Widget};

use super::app::{App, Input, Screen};
use super::keymap::{Action, Context};
use super::theme::Theme;

/// Untrusted text made inert: control and escape sequences stripped.
#[must_use]
pub fn clean(s: &str) -> String {
    crate::core::text::sanitize_for_terminal(s).into_owned()
}

/// A bordered block, highlighted when focused.
pub(crate) fn panel<'a>(title: &'a str, theme: &Theme, focused: bool) -> Block<'a> {
    Block::default()
        .borders(Borders::ALL)
        .border_style(theme.fg(if focused { "border_focus" } else { "border" }))
        .title(Span::styled(
            format!(" {title} "),
            theme.fg(if focused { "accent" } else { "text" }),
        ))
}

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let theme = self.theme();
        let [top, body, bottom] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(area);
        tabs(self, &theme, top, buf);
        match self.screen {
            Screen::Experiments => experiments::render(self, &theme, body, buf),
            Screen::Editor => editor::render(self, &theme, body, buf),
            Screen::Runs => runs::render(self, &theme, body, buf),
            Screen::Monitor => monitor::render(self, &theme, body, buf),
            Screen::Chat => chat::render(self, &theme, body, buf),
            Screen::Study => study::render(self, &theme, body, buf),
            Screen::Compare => compare::render(self, &theme, body, buf),
        }
        status_line(self, &theme, bottom, buf);
        if let Some(popup) = &self.popup {
            popups::render(self, popup, &theme, area, buf);
        }
    }
}

fn tabs(app: &App, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let current = match app.screen {
        Screen::Experiments | Screen::Editor => 0,
        Screen::Runs => 1,
        Screen::Monitor => 2,
        Screen::Chat => 3,
        Screen::Study => 4,
        Screen::Compare => 5,
    };
    let mut spans = vec![Span::styled(
        " slayer ",
        theme.fg("accent").add_modifier(Modifier::BOLD),
    )];
    // Short names on a narrow terminal, so that the counts and the help key still fit.
    let names = if area.width >= 100 {
        ["experiments", "runs", "monitor", "chat", "study", "compare"]
    } else {
        ["exp", "runs", "mon", "chat", "study", "compare"]
    };
    for (i, name) in names.iter().enumerate() {
        let style = if i == current {
            theme.selection()
        } else {
            theme.fg("dim")
        };
        spans.push(Span::raw(" "));
        spans.push(Span::styled(format!("{} {name}", i + 1), style));
    }
    let running = app
        .runs
        .iter()
        .filter(|r| r.status == crate::runner::RunState::Running)
        .count();
    let queued = app
        .runs
        .iter()
        .filter(|r| r.status == crate::runner::RunState::Queued)
        .count();
    // The help key, as bound where the user is, is kept in view before the counts are: on a
    // narrow terminal the counts shorten first, then go.
    let help_context = if app.screen == Screen::Editor {
        Context::Editor
    } else {
        Context::Global
    };
    let help_key = app.keymap.keys_of(help_context, Action::Help, "f1");
    let help_key = help_key.split('/').next().unwrap_or("f1");
    let hint = format!("  {help_key} help");
    let used = Line::from(spans.clone()).width();
    let width = usize::from(area.width);
    let counts = [
        format!("   {running} running, {queued} queued"),
        format!("  {running} run, {queued} queued"),
    ];
    match counts
        .iter()
        .find(|c| used + c.chars().count() + hint.len() <= width)
    {
        Some(c) => {
            spans.push(Span::styled(c.clone(), theme.fg("dim")));
            spans.push(Span::styled(hint, theme.fg("dim")));
        }
        None if used + hint.len() <= width => spans.push(Span::styled(hint, theme.fg("dim"))),
        None => spans.push(Span::styled(counts[1].clone(), theme.fg("dim"))),
    }
    Paragraph::new(Line::from(spans)).render(area, buf);
}

fn status_line(app: &App, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let line = match app.input {
        Input::Command => Line::from(vec![
            Span::styled(":", theme.fg("accent")),
            Span::styled(clean(&app.command), theme.fg("text")),
            Span::styled("█", theme.fg("accent")),
        ]),
        Input::Filter => Line::from(vec![
            Span::styled("/", theme.fg("accent")),
            Span::styled(clean(&app.filter), theme.fg("text")),
            Span::styled("█", theme.fg("accent")),
        ]),
        Input::LogSearch => Line::from(vec![
            Span::styled("search the log: ", theme.fg("accent")),
            Span::styled(clean(&app.log_view.search), theme.fg("text")),
            Span::styled("█", theme.fg("accent")),
        ]),
        _ => {
            if let Some(job) = app.jobs.last() {
                let more = match app.jobs.len() {
                    1 => String::new(),
                    n => format!(" (+{} more)", n - 1),
                };
                Line::from(Span::styled(
                    format!("⋯ {}{more}", clean(&job.label)),
                    theme.fg("running"),
                ))
            } else if let Some((ok, msg)) = &app.status {
                Line::from(Span::styled(
                    clean(msg),
                    theme.fg(if *ok { "ok" } else { "error" }),
                ))
            } else {
                Line::from(Span::styled(hints(app), theme.fg("dim")))
            }
        }
    };
    Paragraph::new(line).render(area, buf);
}

/// A few keys for where the user is (screen, editor), from the keymap.
fn hints(app: &App) -> String {
    let context = app.key_context();
    app.keymap
        .bindings
        .iter()
        .filter(|b| b.context == context)
        .filter_map(|b| {
            let key = b.keys.first()?.label();
            Some(format!("{key} {}", b.action.name().replace('_', " ")))
        })
        .take(7)
        .collect::<Vec<_>>()
        .join("  ")
}

/// The y bounds of chart values: their range, or a unit range when empty or flat.
pub(crate) fn y_bounds(values: impl Iterator<Item = f64>) -> [f64; 2] {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    if !lo.is_finite() {
        return [0.0, 1.0];
    }
    if (hi - lo).abs() < 1e-9 {
        return [lo, lo + 1.0];
    }
    [lo, hi]
}

/// A chart of losses over steps; with `log` the values are log10 losses, labelled as losses.
/// A chart of losses over steps; with `log` the values are log10 losses, labelled as losses.
/// Ticks: five on the x axis and three on the y axis when there is room. The legend goes in
/// the panel's bottom border, never over the plot.
#[expect(
    clippy::too_many_arguments,
    reason = "a chart's parts; one caller each"
)]
pub(crate) fn loss_axes<'a>(
    datasets: Vec<Dataset<'a>>,
    title: &'a str,
    legend: Line<'a>,
    theme: &Theme,
    focused: bool,
    x: [f64; 2],
    y: [f64; 2],
    log: bool,
    width: u16,
) -> Chart<'a> {
    let label = |v: f64| {
        if log {
            format!("{:.3}", 10f64.powf(v))
        } else {
            format!("{v:.3}")
        }
    };
    let x_ticks: u32 = if width >= 60 { 5 } else { 3 };
    let x_labels: Vec<String> = (0..x_ticks)
        .map(|i| {
            format!(
                "{:.0}",
                x[0] + (x[1] - x[0]) * f64::from(i) / f64::from(x_ticks - 1)
            )
        })
        .collect();
    let y_labels = vec![label(y[0]), label(f64::midpoint(y[0], y[1])), label(y[1])];
    Chart::new(datasets)
        .block(panel(title, theme, focused).title_bottom(legend))
        .legend_position(None)
        .x_axis(
            Axis::default()
                .style(theme.fg("dim"))
                .bounds(x)
                .labels(x_labels),
        )
        .y_axis(
            Axis::default()
                .style(theme.fg("dim"))
                .bounds(y)
                .labels(y_labels),
        )
}

/// A legend for a chart's bottom border: each series' glyph in its colour, then its name.
pub(crate) fn legend<'a>(entries: &[(&str, String, Style)]) -> Line<'a> {
    let mut spans = vec![Span::raw(" ")];
    for (glyph, name, style) in entries {
        spans.push(Span::styled((*glyph).to_string(), *style));
        spans.push(Span::styled(format!(" {name}  "), Style::default()));
    }
    Line::from(spans)
}

pub use crate::core::text::duration;

/// The style of a run state.
pub(crate) fn state_style(theme: &Theme, state: crate::runner::RunState) -> Style {
    use crate::runner::RunState;
    theme.fg(match state {
        RunState::Running => "running",
        RunState::Finished => "ok",
        RunState::Failed | RunState::Lost => "error",
        RunState::Stopped => "warning",
        RunState::Queued => "dim",
    })
}

//! The experiments screen: the filterable list, and the selected one's description, plan and
//! lineage (plan → runs → evaluations → chats).

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{List, ListItem, ListState, Paragraph, StatefulWidget, Widget, Wrap};

use super::{clean, panel, state_style};
use crate::tui::app::App;
use crate::tui::theme::Theme;

pub fn render(app: &App, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let [list_area, detail] =
        Layout::horizontal([Constraint::Percentage(35), Constraint::Percentage(65)]).areas(area);
    let visible = app.visible_experiments();
    let title = if app.filter.is_empty() {
        "experiments".to_string()
    } else {
        format!("experiments /{}", clean(&app.filter))
    };
    let block = panel(&title, theme, true);
    if visible.is_empty() {
        let text = if app.experiments.is_empty() {
            "No experiments yet.\n\nn  new from a template"
        } else {
            "Nothing matches the filter.\n\nesc  clear it"
        };
        Paragraph::new(text)
            .style(theme.fg("dim"))
            .block(block)
            .render(list_area, buf);
    } else {
        let items: Vec<ListItem> = visible
            .iter()
            .map(|(_, e)| {
                let mut spans = vec![Span::styled(clean(&e.name), theme.fg("text"))];
                if e.problem.is_some() {
                    spans.push(Span::styled(" ⚠", theme.fg("error")));
                }
                ListItem::new(Line::from(spans))
            })
            .collect();
        let mut state = ListState::default().with_selected(Some(app.selected_experiment));
        StatefulWidget::render(
            List::new(items)
                .block(block)
                .highlight_style(theme.selection()),
            list_area,
            buf,
            &mut state,
        );
    }
    let Some(e) = app.current_experiment() else {
        panel("detail", theme, false).render(detail, buf);
        return;
    };
    let mut lines: Vec<Line> = Vec::new();
    lines.push(Line::from(vec![
        Span::styled("file  ", theme.fg("dim")),
        Span::styled(clean(&e.path.display().to_string()), theme.fg("text")),
    ]));
    lines.push(Line::from(vec![
        Span::styled("base  ", theme.fg("dim")),
        Span::styled(clean(&e.base), theme.fg("text")),
    ]));
    if let Some(p) = &e.problem {
        lines.push(Line::from(Span::styled(clean(p), theme.fg("error"))));
    }
    lines.push(Line::default());
    for l in e.description.lines() {
        lines.push(Line::from(Span::styled(clean(l), theme.fg("text"))));
    }
    lines.push(Line::default());
    lines.push(Line::from(Span::styled("lineage", theme.fg("accent"))));
    if let Some(x) = &e.expanded {
        lines.push(Line::from(Span::styled(
            format!("  expanded → {}", clean(&x.display().to_string())),
            theme.fg("text"),
        )));
    }
    let runs: Vec<_> = app.runs.iter().filter(|r| r.experiment == e.name).collect();
    if runs.is_empty() {
        lines.push(Line::from(Span::styled(
            "  no runs yet: t trains it",
            theme.fg("dim"),
        )));
    }
    for r in runs {
        let mut spans = vec![
            Span::styled(format!("  run {} ", clean(&r.id)), theme.fg("text")),
            Span::styled(r.status.to_string(), state_style(theme, r.status)),
            Span::styled(
                format!("  step {}/{}", r.step, r.total_steps),
                theme.fg("dim"),
            ),
        ];
        if let Some(data) = app.run_data.get(&r.id)
            && let Some(last) = data.evals.last()
        {
            let evals: Vec<String> = last
                .ppl
                .iter()
                .map(|p| format!("{} ppl {:.2}", p.name, p.perplexity))
                .chain(
                    last.tasks
                        .iter()
                        .map(|t| format!("{} acc {:.3}", t.name, t.acc)),
                )
                .collect();
            spans.push(Span::styled(
                format!(
                    "  eval {}: {}",
                    clean(&last.label),
                    clean(&evals.join(", "))
                ),
                theme.fg("dim"),
            ));
        }
        lines.push(Line::from(spans));
        for chat in app.chats.iter().filter(|c| c.runs.contains(&r.id)) {
            lines.push(Line::from(Span::styled(
                format!(
                    "      chat {}: {} turn{} with {}",
                    clean(&chat.id),
                    chat.turns,
                    if chat.turns == 1 { "" } else { "s" },
                    clean(&chat.models.join(" vs "))
                ),
                theme.fg("dim"),
            )));
        }
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(panel(&clean(&e.name), theme, false))
        .render(detail, buf);
}

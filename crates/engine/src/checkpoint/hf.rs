//! HF model directories: `config.json`, single or sharded safetensors (with
//! `model.safetensors.index.json`), tokenizer files and `generation_config.json`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Tensor};

use super::safetensors::{MappedSafetensors, TensorSpec, write_file_streaming};
use super::{WeightSource, check_cancel, check_shape};
use crate::atomic::{sync_dir, write_json, write_synced};
use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

/// An opened, validated HF directory.
pub struct HfDir {
    dir: PathBuf,
    config: LlamaConfig,
    config_json: serde_json::Value,
    generation_config: Option<serde_json::Value>,
    tokenizer: Option<Tokenizer>,
    shards: Vec<MappedSafetensors>,
    /// Tensor name → index into `shards`.
    locations: HashMap<String, usize>,
    dtype: DType,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = crate::corpus::read_settings(path, "JSON file")?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

fn read_optional_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if path.exists() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

impl HfDir {
    /// Opens `dir`, maps its safetensors and checks every tensor against `config.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::format(dir, "not a model directory: no config.json"));
        }
        let config_json = read_json(&config_path)?;
        let config = LlamaConfig::from_json_value(&config_json, &config_path)?;
        let index_path = dir.join("model.safetensors.index.json");
        let (shards, locations) = if index_path.is_file() {
            open_sharded(dir, &index_path)?
        } else {
            let single = dir.join("model.safetensors");
            if !single.is_file() {
                return Err(Error::format(
                    dir,
                    "no weights: neither model.safetensors nor model.safetensors.index.json",
                ));
            }
            let shard = MappedSafetensors::open(&single)?;
            let locations = shard
                .header()
                .tensors
                .keys()
                .map(|k| (k.clone(), 0))
                .collect();
            (vec![shard], locations)
        };
        let mut dtype = None;
        for name in Llama::tensor_names(&config) {
            let &shard = locations.get(&name).ok_or_else(|| {
                Error::tensor(
                    dir,
                    &name,
                    "missing from the checkpoint (the config requires it)",
                )
            })?;
            let entry = &shards[shard].header().tensors[&name];
            check_shape(&config, shards[shard].path(), &name, &entry.shape)?;
            if !matches!(entry.dtype, DType::F32 | DType::F16 | DType::BF16) {
                return Err(Error::tensor(
                    shards[shard].path(),
                    &name,
                    format!("dtype {:?} is not a float type", entry.dtype),
                ));
            }
            dtype.get_or_insert(entry.dtype);
        }
        for name in locations.keys() {
            if let Some(rest) = name.strip_prefix("model.layers.")
                && let Some(idx) = rest.split('.').next().and_then(|s| s.parse::<usize>().ok())
                && idx >= config.num_hidden_layers
            {
                return Err(Error::tensor(
                    dir,
                    name,
                    format!(
                        "block {idx} exists but config.json says num_hidden_layers = {}",
                        config.num_hidden_layers
                    ),
                ));
            }
        }
        let tokenizer = Tokenizer::from_hf_dir(dir, &config)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            generation_config: read_optional_json(&dir.join("generation_config.json"))?,
            config,
            config_json,
            tokenizer,
            shards,
            locations,
            dtype: dtype.unwrap_or(DType::F32),
        })
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

type ShardSet = (Vec<MappedSafetensors>, HashMap<String, usize>);

fn open_sharded(dir: &Path, index_path: &Path) -> Result<ShardSet> {
    let index = read_json(index_path)?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index_path, "no `weight_map` object"))?;
    let mut files: BTreeMap<String, usize> = BTreeMap::new();
    let mut shards = Vec::new();
    let mut locations = HashMap::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::format(
                index_path,
                format!("`weight_map.{name}` is not a file name"),
            )
        })?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(Error::format(
                index_path,
                format!("`weight_map.{name}` names `{file}` outside the directory"),
            ));
        }
        let idx = if let Some(&i) = files.get(file) {
            i
        } else {
            shards.push(MappedSafetensors::open(&dir.join(file))?);
            files.insert(file.to_string(), shards.len() - 1);
            shards.len() - 1
        };
        if !shards[idx].header().tensors.contains_key(name) {
            return Err(Error::tensor(
                shards[idx].path(),
                name,
                format!(
                    "listed in {} but absent from the shard",
                    index_path.display()
                ),
            ));
        }
        locations.insert(name.clone(), idx);
    }
    Ok((shards, locations))
}

impl WeightSource for HfDir {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn config_json(&self) -> Option<&serde_json::Value> {
        Some(&self.config_json)
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    fn generation_config(&self) -> Option<&serde_json::Value> {
        self.generation_config.as_ref()
    }

    fn stored_dtype(&self) -> DType {
        self.dtype
    }

    fn load(&self, name: &str) -> Result<Tensor> {
        let &shard = self
            .locations
            .get(name)
            .ok_or_else(|| Error::tensor(&self.dir, name, "not in the checkpoint"))?;
        self.shards[shard].tensor(name, &candle_core::Device::Cpu)
    }

    fn location(&self) -> &Path {
        &self.dir
    }
}

/// How to write an HF directory.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    pub dtype: DType,
    /// Shards are cut before a tensor would push one past this size.
    pub max_shard_bytes: u64,
    /// Replace an existing output directory.
    pub force: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            max_shard_bytes: 5_000_000_000,
            force: false,
        }
    }
}

/// The `torch_dtype` string HF uses.
#[must_use]
pub fn torch_dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

/// Everything written beside the weights.
pub struct DirContents<'a> {
    pub config: &'a LlamaConfig,
    pub base_config_json: Option<&'a serde_json::Value>,
    pub tokenizer: Option<&'a Tokenizer>,
    pub generation_config: Option<&'a serde_json::Value>,
    /// Extra files (name, bytes), e.g. the resolved plan.
    pub extra_files: Vec<(String, Vec<u8>)>,
}

/// Writes an HF directory at `out`, streaming tensors from `produce` (called once per name, in
/// order) so only one tensor is resident at a time. Everything goes to a temporary sibling
/// directory that is fsynced and renamed into place: `out` is never half-written.
pub fn write_hf_dir(
    out: &Path,
    contents: &DirContents<'_>,
    opts: &SaveOptions,
    mut produce: impl FnMut(&str) -> Result<Tensor>,
    mut progress: impl FnMut(usize, usize),
    cancel: Option<&AtomicBool>,
) -> Result<()> {
    if out.exists() && !opts.force {
        return Err(Error::format(
            out,
            "already exists (pass --force to replace it)",
        ));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let file_name = out
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a directory name", out.display())))?;
    let tmp = parent.join(format!(
        ".{}.partial-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let guard = TempDirGuard(Some(tmp.clone()));
    write_contents(&tmp, contents, opts, &mut produce, &mut progress, cancel)?;
    sync_dir(&tmp)?;
    if out.exists() {
        fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    guard.disarm();
    sync_dir(&parent)?;
    Ok(())
}

fn write_contents(
    dir: &Path,
    contents: &DirContents<'_>,
    opts: &SaveOptions,
    produce: &mut impl FnMut(&str) -> Result<Tensor>,
    progress: &mut impl FnMut(usize, usize),
    cancel: Option<&AtomicBool>,
) -> Result<()> {
    let config = contents.config;
    let names = Llama::tensor_names(config);
    let elem = opts.dtype.size_in_bytes() as u64;
    let sizes: Vec<u64> = names
        .iter()
        .map(|n| {
            Llama::expected_shape(config, n)
                .map_or(0, |s| s.iter().product::<usize>() as u64 * elem)
        })
        .collect();
    // Group consecutive tensors into shards.
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut current = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        if current > 0 && current + size > opts.max_shard_bytes {
            shards.push(Vec::new());
            current = 0;
        }
        current += size;
        if let Some(last) = shards.last_mut() {
            last.push(i);
        }
    }
    let n_shards = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut done = 0;
    for (s, members) in shards.iter().enumerate() {
        let file = if n_shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n_shards:05}.safetensors", s + 1)
        };
        let specs: Vec<TensorSpec> = members
            .iter()
            .map(|&i| TensorSpec {
                name: names[i].clone(),
                dtype: opts.dtype,
                shape: Llama::expected_shape(config, &names[i]).unwrap_or_default(),
            })
            .collect();
        for spec in &specs {
            weight_map.insert(spec.name.clone(), file.clone().into());
        }
        write_file_streaming(&dir.join(&file), &specs, |name| {
            check_cancel(cancel)?;
            let t = produce(name)?.to_dtype(opts.dtype)?;
            done += 1;
            progress(done, names.len());
            Ok(t)
        })?;
    }
    if n_shards > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": sizes.iter().sum::<u64>() },
            "weight_map": weight_map,
        });
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    let config_json = config.to_json(contents.base_config_json, torch_dtype_name(opts.dtype));
    write_json(&dir.join("config.json"), &config_json)?;
    if let Some(g) = contents.generation_config {
        write_json(&dir.join("generation_config.json"), g)?;
    }
    if let Some(tok) = contents.tokenizer {
        tok.save(dir)?;
    }
    for (name, bytes) in &contents.extra_files {
        write_synced(&dir.join(name), bytes)?;
    }
    Ok(())
}

/// Removes a temporary directory unless disarmed (success path).
struct TempDirGuard(Option<PathBuf>);

impl TempDirGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

/// Saves a model (its current weights, trainable or not) with its tokenizer as an HF directory.
pub fn save_model(
    model: &Llama,
    tokenizer: Option<&Tokenizer>,
    base_config_json: Option<&serde_json::Value>,
    generation_config: Option<&serde_json::Value>,
    out: &Path,
    opts: &SaveOptions,
) -> Result<()> {
    let params: HashMap<String, Tensor> = model
        .named_params()
        .into_iter()
        .map(|(n, p)| Ok((n, p.dense()?)))
        .collect::<Result<_>>()?;
    let contents = DirContents {
        config: &model.config,
        base_config_json,
        tokenizer,
        generation_config,
        extra_files: Vec::new(),
    };
    write_hf_dir(
        out,
        &contents,
        opts,
        |name| {
            params
                .get(name)
                .cloned()
                .ok_or_else(|| Error::tensor(out, name, "not in the model"))
        },
        |_, _| {},
        None,
    )
}

//! `kiln import`, `kiln export`, `kiln logits`: Hugging Face checkpoints in and out, and the
//! reference outputs (logits, loss, gradients) that fidelity checks compare with `transformers`.
//!
//! Thin shells over `kiln_runtime::hf::model`; every failure is a miette diagnostic.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use kiln_runtime::checkpoint::{load_checkpoint, save_checkpoint};
use kiln_runtime::hf::model::{export_file, import as import_hf, reference_outputs, SpecModel};
use kiln_runtime::hf::{read_safetensors, write_checkpoint, write_safetensors};
use kiln_runtime::session::Executor;
use miette::miette;

fn executor(name: Option<&str>) -> miette::Result<Executor> {
    match name {
        None => Ok(Executor::Cpu),
        Some(n) => n
            .parse()
            .map_err(|e: String| miette!(code = "cli::executor", "{e}")),
    }
}

pub fn import(spec: &Path, model: &str, hf_dir: &Path, out: &Path) -> miette::Result<ExitCode> {
    let ckpt = import_hf(spec, model, hf_dir)?;
    save_checkpoint(out, &ckpt)?;
    eprintln!(
        "{}: {} tensors of `{model}` from {}",
        out.display(),
        ckpt.params.len(),
        hf_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn export(checkpoint: &Path, out: &Path) -> miette::Result<ExitCode> {
    let (config, tensors) = export_file(checkpoint)?;
    write_checkpoint(out, &config, &tensors)?;
    eprintln!("{}: {} tensors", out.display(), tensors.len());
    Ok(ExitCode::SUCCESS)
}

pub fn logits(
    checkpoint: &Path,
    input: &Path,
    out: &Path,
    grads: bool,
    exec: Option<&str>,
) -> miette::Result<ExitCode> {
    let executor = executor(exec)?;
    let ckpt = load_checkpoint(checkpoint)?;
    let spec = SpecModel::of_checkpoint(checkpoint, &ckpt)?;
    let io = read_safetensors(input)?;
    let result = reference_outputs(&spec, &ckpt.params, &io, grads, executor)?;
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(out, &result.tensors, &metadata)?;
    if let Some(l) = result.tensors.get("loss") {
        eprintln!("loss {:.7}", l.data[0]);
    }
    eprintln!("{}: {} tensors", out.display(), result.tensors.len());
    Ok(ExitCode::SUCCESS)
}

//! `kiln check`, `kiln fmt`, `kiln params`: the spec-level commands.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kiln_compiler::sema::{self, param_counts, Request, SemaDiagnostic, Workspace};
use miette::{miette, IntoDiagnostic, Report};

/// Read a file or return a diagnostic naming it.
pub fn read(path: &Path) -> miette::Result<String> {
    let bytes = std::fs::read(path)
        .map_err(|e| miette!(code = "io::read", "cannot read `{}`: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|e| {
        miette!(
            code = "io::utf8",
            "`{}` is not UTF-8 text (invalid byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })
}

/// Print diagnostics to stderr (with colour on a terminal), returning how many were errors.
pub fn emit(diags: &[SemaDiagnostic]) -> usize {
    let tty = std::io::stderr().is_terminal();
    let mut errors = 0;
    for d in diags {
        if d.is_error() {
            errors += 1;
        }
        if tty {
            eprintln!("{:?}", Report::new(d.clone()));
        } else {
            eprint!("{}", sema::render(d));
        }
    }
    errors
}

/// Load user files into a workspace (with the embedded stdlib).
pub fn load(files: &[PathBuf]) -> miette::Result<(Workspace, Vec<usize>)> {
    let mut ws = Workspace::new();
    let mut ids = Vec::new();
    for f in files {
        let text = read(f)?;
        ids.push(ws.add_file(&f.display().to_string(), &text));
    }
    Ok((ws, ids))
}

pub fn check(files: &[PathBuf]) -> miette::Result<ExitCode> {
    let (ws, ids) = load(files)?;
    let diags = ws.check(&ids);
    let errors = emit(&diags);
    if errors > 0 {
        eprintln!("kiln check: {errors} error(s) in {} file(s)", files.len());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn fmt(files: &[PathBuf], check_only: bool) -> miette::Result<ExitCode> {
    let mut unformatted = Vec::new();
    let mut failed = false;
    for f in files {
        let text = read(f)?;
        let file = match kiln_grammar::parse(&text) {
            Ok(file) => file,
            Err(errs) => {
                let mut ws = Workspace::new();
                let id = ws.add_file(&f.display().to_string(), &text);
                emit(
                    &ws.check(&[id])
                        .into_iter()
                        .filter(|d| d.code.starts_with("syntax"))
                        .collect::<Vec<_>>(),
                );
                let _ = errs;
                failed = true;
                continue;
            }
        };
        let formatted = kiln_grammar::format(&file, &text);
        if formatted != text {
            if check_only {
                unformatted.push(f.display().to_string());
            } else {
                write_atomic(f, &formatted)?;
            }
        }
    }
    if failed {
        return Ok(ExitCode::from(1));
    }
    if !unformatted.is_empty() {
        for f in &unformatted {
            eprintln!("would reformat {f}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Write through a temporary file and a rename, so an interrupted write never leaves half a file.
pub fn write_atomic(path: &Path, text: &str) -> miette::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.kiln-tmp"));
    std::fs::write(&tmp, text).into_diagnostic()?;
    std::fs::rename(&tmp, path).into_diagnostic()?;
    Ok(())
}

/// `k=v` pairs for `--set`.
pub fn overrides(set: &[String]) -> miette::Result<Vec<(String, sema::Value)>> {
    set.iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                miette!(
                    code = "cli::set",
                    help = "write `--set name=value`",
                    "`--set {kv}` has no `=`"
                )
            })?;
            Ok((k.trim().to_string(), sema::parse_value(v)))
        })
        .collect()
}

pub fn params(
    spec: &Path,
    model: Option<&str>,
    set: &[String],
    json: bool,
) -> miette::Result<ExitCode> {
    let (ws, ids) = load(&[spec.to_path_buf()])?;
    let pre: Vec<SemaDiagnostic> = ws.load_diagnostics.clone();
    if emit(&pre) > 0 {
        return Ok(ExitCode::from(1));
    }
    let configs = match model {
        Some(m) => vec![m.to_string()],
        None => ws.configs_of(ids[0]),
    };
    let overrides = overrides(set)?;
    for c in configs {
        let req = Request {
            config: c.clone(),
            overrides: overrides.clone(),
            objective: None,
            training: false,
        };
        let inst = match ws.instantiate(&req) {
            Ok(i) => i,
            Err(ds) => {
                emit(&ds);
                return Ok(ExitCode::from(1));
            }
        };
        let pc = param_counts(&inst.graph);
        if json {
            println!(
                "{}",
                serde_json::json!({"model": c, "params": pc.total, "non_embedding_params": pc.non_embedding})
            );
        } else {
            println!(
                "{c}: {} parameters ({} non-embedding)",
                group(pc.total),
                group(pc.non_embedding)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// 124439808 → 124,439,808
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

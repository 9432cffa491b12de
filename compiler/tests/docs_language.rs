//! Keeps `docs/language.md` true: every ```kiln block of the reference is checked as a file, the
//! way `kiln check` would, and the reference is held to cover the whole language as the code
//! defines it (every builtin, constant, keyword, stdlib item and diagnostic code).
//!
//! Block tags (the fence's info string, comma-separated after `kiln`):
//! - none: a complete file that must check with no error and no warning;
//! - `error=CODE`: must fail with (at least) an error of that code;
//! - `warning=CODE`: must check without errors but warn with that code;
//! - `fragment`: not checked (snippets that cannot stand alone; kept few);
//! - `params=CONFIG:COUNT`: the config's total parameter count (repeatable, `_` allowed in COUNT);
//! - `param=CONFIG:NAME`: the config's graph has a parameter of that full name (repeatable);
//! - `objective=CONFIG:NAME`: the objective (e.g. a stdlib one) instantiates over the config.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kiln_compiler::ir::Op;
use kiln_compiler::sema::{builtins, param_counts, render, Request, SemaDiagnostic, Workspace, STDLIB};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Clean,
    Error(String),
    Warning(String),
    Fragment,
}

#[derive(Debug, Clone)]
struct Example {
    /// 1-based line of the opening fence.
    line: usize,
    text: String,
    expect: Expect,
    params: Vec<(String, u64)>,
    param_names: Vec<(String, String)>,
    objectives: Vec<(String, String)>,
}

/// Every fenced block of `lang` (the first word of the info string) with its tags.
fn fenced_blocks(doc: &str, lang: &str) -> Vec<(usize, Vec<String>, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```").filter(|i| !i.contains('`')) else { continue };
        let mut body = String::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.starts_with("```") {
                closed = true;
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        assert!(closed, "line {}: unclosed code fence", i + 1);
        let mut tags = info.split(',').map(|s| s.trim().to_string());
        if tags.next().as_deref() == Some(lang) {
            out.push((i + 1, tags.collect(), body));
        }
    }
    out
}

fn examples() -> Vec<Example> {
    let doc = std::fs::read_to_string(root().join("docs/language.md")).expect("docs/language.md");
    fenced_blocks(&doc, "kiln")
        .into_iter()
        .map(|(line, tags, text)| {
            let mut ex = Example {
                line,
                text,
                expect: Expect::Clean,
                params: Vec::new(),
                param_names: Vec::new(),
                objectives: Vec::new(),
            };
            for t in tags {
                let (k, v) = t.split_once('=').unwrap_or((t.as_str(), ""));
                let set = |ex: &mut Example, e: Expect| {
                    assert_eq!(ex.expect, Expect::Clean, "line {line}: more than one of error/warning/fragment");
                    ex.expect = e;
                };
                match k {
                    "error" => set(&mut ex, Expect::Error(v.to_string())),
                    "warning" => set(&mut ex, Expect::Warning(v.to_string())),
                    "fragment" => set(&mut ex, Expect::Fragment),
                    "params" => {
                        let (c, n) = v.split_once(':').unwrap_or_else(|| panic!("line {line}: params=CONFIG:COUNT"));
                        let n = n.replace('_', "").parse().unwrap_or_else(|_| panic!("line {line}: bad count `{n}`"));
                        ex.params.push((c.to_string(), n));
                    }
                    "param" => {
                        let (c, n) = v.split_once(':').unwrap_or_else(|| panic!("line {line}: param=CONFIG:NAME"));
                        ex.param_names.push((c.to_string(), n.to_string()));
                    }
                    "objective" => {
                        let (c, n) = v.split_once(':').unwrap_or_else(|| panic!("line {line}: objective=CONFIG:NAME"));
                        ex.objectives.push((c.to_string(), n.to_string()));
                    }
                    other => panic!("line {line}: unknown tag `{other}`"),
                }
            }
            ex
        })
        .collect()
}

fn show(ds: &[SemaDiagnostic]) -> String {
    ds.iter().map(|d| render(d)).collect::<Vec<_>>().join("\n")
}

/// Checks one example; `Err` says how it differs from what its tags state.
fn check_example(ex: &Example) -> Result<(), String> {
    if ex.expect == Expect::Fragment {
        return Ok(());
    }
    let mut ws = Workspace::new();
    let id = ws.add_file(&format!("language.md:{}", ex.line), &ex.text);
    let diags = ws.check(&[id]);
    let rendered = || show(&diags);
    let errors: Vec<&str> = diags.iter().filter(|d| d.is_error()).map(|d| d.code).collect();
    let warnings: Vec<&str> = diags.iter().filter(|d| !d.is_error()).map(|d| d.code).collect();
    match &ex.expect {
        Expect::Clean if !diags.is_empty() => return Err(format!("must check clean, but:\n{}", rendered())),
        Expect::Error(code) if !errors.contains(&code.as_str()) => {
            return Err(format!("must fail with `{code}`, but gives {errors:?}:\n{}", rendered()))
        }
        Expect::Warning(code) if !errors.is_empty() || !warnings.contains(&code.as_str()) => {
            return Err(format!("must warn `{code}` without errors, but:\n{}", rendered()))
        }
        _ => {}
    }
    for (config, want) in &ex.params {
        let inst = ws
            .instantiate(&Request { config: config.clone(), ..Default::default() })
            .map_err(|ds| format!("`{config}` does not instantiate:\n{}", show(&ds)))?;
        let got = param_counts(&inst.graph).total;
        if got != *want {
            return Err(format!("`{config}` has {got} parameters, the doc says {want}"));
        }
    }
    for (config, name) in &ex.param_names {
        let inst = ws
            .instantiate(&Request { config: config.clone(), ..Default::default() })
            .map_err(|ds| format!("`{config}` does not instantiate:\n{}", show(&ds)))?;
        if inst.graph.find_param(name).is_none() {
            let names: Vec<String> = inst
                .graph
                .params()
                .into_iter()
                .filter_map(|p| match inst.graph.node(p).op() {
                    Op::Param { name, .. } => Some(name.clone()),
                    _ => None,
                })
                .collect();
            return Err(format!("`{config}` has no parameter `{name}`; it has {names:?}"));
        }
    }
    for (config, objective) in &ex.objectives {
        let req = Request {
            config: config.clone(),
            objective: Some((objective.clone(), vec![])),
            training: true,
            ..Default::default()
        };
        if let Err(ds) = ws.instantiate(&req) {
            return Err(format!("objective `{objective}` over `{config}`:\n{}", show(&ds)));
        }
    }
    Ok(())
}

#[test]
fn every_example_checks_as_its_tag_states() {
    let exs = examples();
    let failures: Vec<String> = exs
        .iter()
        .filter_map(|ex| {
            check_example(ex).err().map(|e| format!("--- docs/language.md line {}: {e}\n{}", ex.line, ex.text))
        })
        .collect();
    assert!(failures.is_empty(), "{} of {} examples are wrong:\n{}", failures.len(), exs.len(), failures.join("\n"));
}

#[test]
fn the_checker_of_examples_can_fail() {
    // A wrong tag must be caught, or the test above proves nothing.
    let wrong = |text: &str, expect: Expect| Example {
        line: 0,
        text: text.into(),
        expect,
        params: vec![],
        param_names: vec![],
        objectives: vec![],
    };
    let good = "model m(d = 4) {\n    input x: f32[batch, d]\n    return x\n}\n";
    assert!(check_example(&wrong(good, Expect::Clean)).is_ok());
    assert!(check_example(&wrong(good, Expect::Error("sema::unknown_name".into()))).is_err());
    assert!(check_example(&wrong("model m() { return y }", Expect::Clean)).is_err());
    assert!(check_example(&wrong("model m() { return y }", Expect::Error("sema::unknown_name".into()))).is_ok());
    let mut p = wrong(&format!("{good}config c = m()\n"), Expect::Clean);
    p.params.push(("c".into(), 1));
    assert!(check_example(&p).is_err());
}

#[test]
fn fragments_are_few() {
    let exs = examples();
    let fragments = exs.iter().filter(|e| e.expect == Expect::Fragment).count();
    assert!(exs.len() >= 60, "only {} examples", exs.len());
    assert!(fragments * 10 <= exs.len(), "{fragments} of {} examples are unchecked fragments", exs.len());
}

/// The text of every example that checks clean (what a reader can copy and run), plus the
/// objectives those examples instantiate (stdlib objectives cannot be called from a file).
fn clean_text() -> String {
    let mut out = String::new();
    for e in examples().into_iter().filter(|e| e.expect == Expect::Clean) {
        out.push_str(&e.text);
        for (_, o) in &e.objectives {
            out.push_str(&format!("\n{o}\n"));
        }
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `word` occurs in `text` as a whole word, optionally followed directly by `after`.
fn has_word(text: &str, word: &str, after: &str) -> bool {
    let pat = format!("{word}{after}");
    text.match_indices(&pat).any(|(i, _)| {
        let before_ok = text[..i].chars().next_back().is_none_or(|c| !is_ident_char(c));
        let end = i + word.len();
        let after_ok = !after.is_empty() || text[end..].chars().next().is_none_or(|c| !is_ident_char(c));
        before_ok && after_ok
    })
}

#[test]
fn clean_examples_call_every_builtin() {
    let text = clean_text();
    let missing: Vec<&str> = builtins::BUILTINS.iter().map(|b| b.name).filter(|n| !has_word(&text, n, "(")).collect();
    assert!(missing.is_empty(), "builtins without a checked example: {missing:?}");
}

#[test]
fn clean_examples_use_every_constant_keyword_and_data_transform() {
    let text = clean_text();
    let words = builtins::CONSTANTS
        .iter()
        .chain(kiln_grammar::parser::KEYWORDS)
        .chain(builtins::DATA_TRANSFORMS)
        .chain(kiln_compiler::sema::plancheck::PLAN_KEYS)
        .chain(kiln_compiler::sema::plancheck::KEEP_KINDS);
    let missing: Vec<&&str> = words.filter(|w| !has_word(&text, w, "")).collect();
    assert!(missing.is_empty(), "without a checked example: {missing:?}");
}

#[test]
fn clean_examples_use_every_stdlib_item() {
    let text = clean_text();
    let mut missing = Vec::new();
    for (name, src) in STDLIB {
        let file = kiln_grammar::parse(src).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        for item in &file.items {
            let n = &item.name().name;
            let used = has_word(&text, n, "(") || has_word(&text, n, "");
            if !used {
                missing.push(n.clone());
            }
        }
    }
    assert!(missing.is_empty(), "stdlib items without a checked example: {missing:?}");
}

/// Every diagnostic code the checker and parser can emit, read from their source: string literals
/// `"sema::..."`, `"shape::..."`, `"plan::..."`, `"syntax::..."`.
fn codes_in_source() -> BTreeSet<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("compiler/src/sema"))
        .expect("sema sources")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.push(root().join("grammar/src/error.rs"));
    let mut out = BTreeSet::new();
    for f in files {
        let src = std::fs::read_to_string(&f).expect("source file");
        for ns in ["sema", "shape", "plan", "syntax"] {
            let pat = format!("\"{ns}::");
            for (i, _) in src.match_indices(&pat) {
                let rest = &src[i + 1..];
                let end = rest.find('"').unwrap_or(0);
                let code = &rest[..end];
                if code.len() > ns.len() + 2 && code[ns.len() + 2..].chars().all(|c| c.is_ascii_lowercase() || c == '_')
                {
                    out.insert(code.to_string());
                }
            }
        }
    }
    out
}

/// Codes listed in the reference's diagnostics table: rows starting ``| `ns::name` |``.
fn codes_in_table() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(root().join("docs/language.md")).expect("docs/language.md");
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(c, _)| c.to_string()))
        .filter(|c| c.contains("::"))
        .collect()
}

#[test]
fn the_diagnostics_table_lists_exactly_the_codes_in_the_source() {
    let src = codes_in_source();
    assert!(src.len() >= 40, "found only {} codes in the source: {src:?}", src.len());
    let table = codes_in_table();
    let undocumented: Vec<_> = src.difference(&table).collect();
    let stale: Vec<_> = table.difference(&src).collect();
    assert!(undocumented.is_empty(), "codes missing from the table in docs/language.md: {undocumented:?}");
    assert!(stale.is_empty(), "codes in the table that the source no longer has: {stale:?}");
}

#[test]
fn error_examples_name_documented_codes() {
    let table = codes_in_table();
    for ex in examples() {
        if let Expect::Error(c) | Expect::Warning(c) = &ex.expect {
            assert!(table.contains(c), "line {}: `{c}` is not in the diagnostics table", ex.line);
        }
    }
}

#[test]
fn the_stated_limits_are_the_checker_s() {
    use kiln_compiler::sema::eval::{MAX_NODES, MAX_STEPS};
    let underscored = |n: u64| {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push('_');
            }
            out.push(c);
        }
        format!("`{out}`")
    };
    let doc = std::fs::read_to_string(root().join("docs/language.md")).expect("docs/language.md");
    for n in [MAX_STEPS, MAX_NODES as u64] {
        assert!(doc.contains(&underscored(n)), "docs/language.md does not state the limit {}", underscored(n));
    }
}

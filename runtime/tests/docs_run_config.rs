//! Keeps `docs/run-config.md` true: every ```yaml block loads with `RunConfig::from_yaml` (or
//! fails with its stated code), and the field tables cover exactly the fields of the config types
//! as the code defines them, with the defaults the code gives.
//!
//! The field list is derived twice, so neither can fall behind: from the source of
//! `runtime/src/config.rs` (every `pub` field of every `Deserialize` struct, nested by the field
//! types of `RunConfig`), and from `to_yaml()` of the page's complete example (every key). The two
//! must agree, and every dotted path must have a row in the page's tables.
//!
//! Block tags (comma-separated after `yaml`): `full` (the complete example), `error=CODE`,
//! `set=PATH=VALUE` (a `--set` override, repeatable).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kiln_runtime::config::{
    ConfigError, OptimizerConfig, OptimizerKind, Override, RunConfig, DEFAULT_VAL_FRACTION,
};
use kiln_runtime::config::{DataSource, Optimizer, TokenizerConfig};
use kiln_runtime::yaml;
use miette::{GraphicalReportHandler, GraphicalTheme};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn doc() -> String {
    std::fs::read_to_string(root().join("docs/run-config.md")).expect("docs/run-config.md")
}

struct Block {
    line: usize,
    tags: Vec<String>,
    text: String,
}

fn yaml_blocks(doc: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let Some(info) = line.strip_prefix("```").filter(|i| !i.contains('`')) else {
            continue;
        };
        let mut text = String::new();
        let mut closed = false;
        for (_, l) in lines.by_ref() {
            if l.starts_with("```") {
                closed = true;
                break;
            }
            text.push_str(l);
            text.push('\n');
        }
        assert!(closed, "line {}: unclosed code fence", i + 1);
        let mut tags = info.split(',').map(|s| s.trim().to_string());
        if tags.next().as_deref() == Some("yaml") {
            out.push(Block {
                line: i + 1,
                tags: tags.collect(),
                text,
            });
        }
    }
    out
}

fn render(e: &ConfigError) -> String {
    let mut out = String::new();
    let _ = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_urls(false)
        .render_report(&mut out, e);
    out
}

/// Loads a block as the CLI would, with its `set=` overrides; paths stay relative (empty base).
fn load(b: &Block) -> Result<RunConfig, ConfigError> {
    let sets: Vec<Override> = b
        .tags
        .iter()
        .filter_map(|t| t.strip_prefix("set="))
        .map(|s| {
            Override::parse(s)
                .unwrap_or_else(|e| panic!("line {}: bad set tag: {}", b.line, render(&e)))
        })
        .collect();
    RunConfig::from_yaml(
        &b.text,
        &format!("run-config.md:{}", b.line),
        Path::new(""),
        &sets,
    )
}

#[test]
fn every_yaml_example_loads_as_its_tag_states() {
    let blocks = yaml_blocks(&doc());
    assert!(blocks.len() >= 15, "only {} yaml examples", blocks.len());
    let mut failures = Vec::new();
    for b in &blocks {
        let want = b.tags.iter().find_map(|t| t.strip_prefix("error="));
        for t in &b.tags {
            assert!(
                t == "full" || t.starts_with("error=") || t.starts_with("set="),
                "line {}: unknown tag `{t}`",
                b.line
            );
        }
        match (load(b), want) {
            (Ok(_), None) => {}
            (Ok(_), Some(code)) => failures.push(format!(
                "line {}: must fail with `{code}`, but loads",
                b.line
            )),
            (Err(e), None) => {
                failures.push(format!("line {}: must load, but:\n{}", b.line, render(&e)))
            }
            (Err(e), Some(code)) if e.kind().code() != code => failures.push(format!(
                "line {}: must fail with `{code}`, fails with `{}`:\n{}",
                b.line,
                e.kind().code(),
                render(&e)
            )),
            (Err(_), Some(_)) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_example_checker_can_fail() {
    let bad = Block {
        line: 0,
        tags: vec![],
        text: "spec: a.kiln\nmodel: m\n".into(),
    };
    assert!(load(&bad).is_err());
    let good = Block {
        line: 0,
        tags: vec![],
        text: "spec: a.kiln\nmodel: m\ndata: {path: t.txt}\nsteps: 1\n".into(),
    };
    assert!(load(&good).is_ok());
}

// ----- the field list, from the source --------------------------------------------------------

/// `struct name -> [(field, type)]` for every `pub struct` of config.rs that derives `Deserialize`,
/// leaving out `#[serde(skip)]` fields.
fn structs_in_source() -> BTreeMap<String, Vec<(String, String)>> {
    let src = std::fs::read_to_string(root().join("runtime/src/config.rs")).expect("config.rs");
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = src.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let derives = lines[..i]
                .iter()
                .rev()
                .take_while(|l| l.trim().starts_with("#[") || l.trim().starts_with("///"))
                .any(|l| l.contains("Deserialize"));
            let name = rest
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .next()
                .unwrap_or("")
                .to_string();
            let mut fields = Vec::new();
            let mut skip = false;
            i += 1;
            while i < lines.len() && lines[i].trim() != "}" {
                let l = lines[i].trim();
                if l.starts_with("#[serde(skip)]") {
                    skip = true;
                } else if let Some(f) = l.strip_prefix("pub ") {
                    if let Some((field, ty)) = f.split_once(':') {
                        if !skip {
                            fields.push((
                                field.trim().to_string(),
                                ty.trim().trim_end_matches(',').to_string(),
                            ));
                        }
                    }
                    skip = false;
                } else if !l.starts_with("#[") && !l.starts_with("///") && !l.is_empty() {
                    skip = false;
                }
                i += 1;
            }
            if derives && rest.trim_end().ends_with('{') {
                out.insert(name, fields);
            }
        }
        i += 1;
    }
    out
}

/// Dotted paths of every field, from the source: `RunConfig`'s fields, with the fields of nested
/// config structs under their section.
fn paths_from_source() -> BTreeSet<String> {
    let structs = structs_in_source();
    let top = structs.get("RunConfig").expect("RunConfig in config.rs");
    let mut out = BTreeSet::new();
    add_fields(&structs, "", top, &mut out);
    out
}

/// Adds `prefix + field` for every field, and recursively the fields of nested config structs
/// (an optional section such as `finetune: Option<FinetuneConfig>` has its struct's fields too).
fn add_fields(
    structs: &BTreeMap<String, Vec<(String, String)>>,
    prefix: &str,
    fields: &[(String, String)],
    out: &mut BTreeSet<String>,
) {
    for (field, ty) in fields {
        let path = format!("{prefix}{field}");
        out.insert(path.clone());
        let ty = ty
            .strip_prefix("Option<")
            .and_then(|t| t.strip_suffix('>'))
            .unwrap_or(ty);
        if let Some(inner) = structs.get(ty) {
            add_fields(structs, &format!("{path}."), inner, out);
        }
    }
}

fn walk(prefix: &str, v: &yaml::Value, out: &mut BTreeMap<String, yaml::Value>) {
    if let yaml::Value::Mapping(m) = v {
        for (k, child) in m {
            let key = k.as_str().expect("string keys").to_string();
            let path = if prefix.is_empty() {
                key
            } else {
                format!("{prefix}.{key}")
            };
            out.insert(path.clone(), child.clone());
            // `set:` and `objective_args:` hold the spec's hyperparameters and objective
            // arguments, not fields of the run config.
            if path != "set" && path != "objective_args" {
                walk(&path, child, out);
            }
        }
    }
}

/// Every dotted path of a config's serialization, with its value.
fn serialized(c: &RunConfig) -> BTreeMap<String, yaml::Value> {
    let v = yaml::parse_value(&c.to_yaml()).expect("to_yaml parses");
    let mut out = BTreeMap::new();
    walk("", &v, &mut out);
    out
}

/// Field rows of the page: ``| `path` | type | default | meaning |`` → the default cell.
fn table_rows() -> BTreeMap<String, String> {
    doc()
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            if cells.len() != 6 {
                return None;
            }
            let path = cells[1].strip_prefix('`')?.strip_suffix('`')?;
            (!path.contains("::")).then(|| (path.to_string(), cells[3].to_string()))
        })
        .collect()
}

fn full_example() -> RunConfig {
    let blocks = yaml_blocks(&doc());
    let full: Vec<&Block> = blocks
        .iter()
        .filter(|b| b.tags.iter().any(|t| t == "full"))
        .collect();
    assert_eq!(full.len(), 1, "exactly one block is tagged `full`");
    load(full[0]).unwrap_or_else(|e| panic!("the full example does not load:\n{}", render(&e)))
}

#[test]
fn the_source_and_the_full_example_have_the_same_fields() {
    let from_source = paths_from_source();
    assert!(
        from_source.len() >= 30,
        "read only {} fields from config.rs: {from_source:?}",
        from_source.len()
    );
    let mut from_yaml: BTreeSet<String> = serialized(&full_example()).into_keys().collect();
    // Fields that exclude what the full example sets, shown in their own examples.
    for p in [
        "data.token_file",
        "data.examples",
        "optimizer.momentum",
        "optimizer.nesterov",
    ] {
        assert!(!from_yaml.contains(p));
        from_yaml.insert(p.to_string());
    }
    // The tokenizer's map form is a value of `data.tokenizer`, not a struct field.
    let from_yaml: BTreeSet<String> = from_yaml
        .into_iter()
        .filter(|p| p != "data.tokenizer.tokenizer_json")
        .collect();
    assert_eq!(
        from_source, from_yaml,
        "config.rs's fields vs the full example's keys"
    );
}

#[test]
fn every_field_has_a_row() {
    let rows = table_rows();
    let mut want = paths_from_source();
    want.insert("data.tokenizer.tokenizer_json".into());
    let missing: Vec<&String> = want.iter().filter(|p| !rows.contains_key(*p)).collect();
    let stale: Vec<&String> = rows.keys().filter(|p| !want.contains(*p)).collect();
    assert!(
        missing.is_empty(),
        "fields without a row in docs/run-config.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "rows for fields the code does not have: {stale:?}"
    );
}

const MINIMAL: &str = "spec: s.kiln\nmodel: m\ndata: {path: t.txt}\nsteps: 7\n";

/// A minimal config: only the required fields.
fn minimal() -> RunConfig {
    RunConfig::from_yaml(MINIMAL, "minimal", Path::new(""), &[]).expect("minimal config")
}

#[test]
fn stated_defaults_are_the_code_s() {
    let rows = table_rows();
    let mut wrong = Vec::new();
    // Fields that serialize a value when absent: the row's default must be that value, in backticks.
    let mut given = BTreeMap::new();
    walk(
        "",
        &yaml::parse_value(MINIMAL).expect("minimal yaml"),
        &mut given,
    );
    for (path, value) in serialized(&minimal()) {
        let Some(cell) = rows.get(&path) else {
            wrong.push(format!("`{path}` has no row"));
            continue;
        };
        if given.contains_key(&path) || matches!(value, yaml::Value::Mapping(_)) {
            continue;
        }
        let stated = cell
            .strip_prefix('`')
            .and_then(|c| c.split_once('`'))
            .map(|(v, _)| v);
        match stated.map(yaml::parse_value) {
            Some(Ok(v)) if v == value => {}
            _ => wrong.push(format!(
                "`{path}`: the code's default is {value:?}, the row says {cell}"
            )),
        }
    }
    // Required fields: exactly the keys of the minimal config, and leaving one out is an error.
    for (path, cell) in &rows {
        let in_minimal = given.contains_key(path) && !path.contains('.');
        if (cell == "required") != in_minimal {
            wrong.push(format!(
                "`{path}`: the row says {cell}, but the minimal config {} it",
                if in_minimal { "needs" } else { "does not need" }
            ));
        }
        if in_minimal {
            let without: String = MINIMAL
                .lines()
                .filter(|l| !l.starts_with(&format!("{path}:")))
                .map(|l| format!("{l}\n"))
                .collect();
            match RunConfig::from_yaml(&without, "minimal", Path::new(""), &[]) {
                Err(e) if e.kind().code() == "config::missing_field" => {}
                other => wrong.push(format!(
                    "`{path}` is stated required, but leaving it out gives {:?}",
                    other.map(|_| ()).map_err(|e| e.kind())
                )),
            }
        }
    }
    // Optional fields, whose defaults the code fills in when used.
    let c = minimal();
    let sgd = OptimizerConfig {
        kind: OptimizerKind::Sgd,
        ..OptimizerConfig::default()
    };
    let (
        Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        },
        Optimizer::Sgd {
            momentum,
            nesterov,
            weight_decay: sgd_wd,
            ..
        },
    ) = (c.optimizer.resolved(), sgd.resolved())
    else {
        panic!("unexpected optimizer kinds")
    };
    let Some(DataSource::Text {
        val_fraction,
        tokenizer,
        ..
    }) = c.data.source()
    else {
        panic!("text data")
    };
    assert_eq!(val_fraction, DEFAULT_VAL_FRACTION);
    let sched = c.lr_schedule();
    let num = |x: f64| {
        if x != 0.0 && x.abs() < 1e-3 {
            format!("{x:e}")
        } else {
            format!("{x}")
        }
    };
    let checks: Vec<(&str, Vec<String>)> = vec![
        ("optimizer.beta1", vec![num(beta1)]),
        ("optimizer.beta2", vec![num(beta2)]),
        ("optimizer.eps", vec![num(eps)]),
        (
            "optimizer.weight_decay",
            vec![num(weight_decay), num(sgd_wd)],
        ),
        ("optimizer.momentum", vec![num(momentum)]),
        ("optimizer.nesterov", vec![nesterov.to_string()]),
        ("data.val_fraction", vec![num(val_fraction)]),
        (
            "data.tokenizer",
            vec![match tokenizer {
                TokenizerConfig::Char => "char".into(),
                TokenizerConfig::Byte => "byte".into(),
                TokenizerConfig::TokenizerJson(_) => "tokenizer_json".into(),
            }],
        ),
        (
            "schedule.min_lr",
            vec![if sched.min_lr == c.optimizer.lr / 10.0 {
                "lr / 10".into()
            } else {
                num(sched.min_lr)
            }],
        ),
        (
            "schedule.decay_steps",
            vec![if sched.decay_steps == c.steps {
                "steps".into()
            } else {
                sched.decay_steps.to_string()
            }],
        ),
        (
            "threads",
            vec![if c.threads.is_none() {
                "absent".into()
            } else {
                "?".into()
            }],
        ),
        (
            "set",
            vec![if c.set.is_empty() {
                "{}".into()
            } else {
                "?".into()
            }],
        ),
    ];
    for (path, needles) in checks {
        let Some(cell) = rows.get(path) else {
            wrong.push(format!("`{path}` has no row"));
            continue;
        };
        for n in needles {
            if !cell.contains(&n) {
                wrong.push(format!(
                    "`{path}`: the code's default is {n}, the row says {cell}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_choice_of_every_enum_is_named() {
    // Enum choices as serialized: each must appear in backticks on the page.
    let doc = doc();
    let src = std::fs::read_to_string(root().join("runtime/src/config.rs")).expect("config.rs");
    let mut missing = Vec::new();
    for name in ["OptimizerKind", "Decay", "Device", "Precision"] {
        let start = src
            .find(&format!("pub enum {name} {{"))
            .unwrap_or_else(|| panic!("enum {name}"));
        let body = &src[start..start + src[start..].find('}').expect("enum end")];
        for line in body.lines().skip(1) {
            let v = line.trim().trim_end_matches(',');
            if v.is_empty() || v.starts_with('#') || v.starts_with("//") {
                continue;
            }
            let shown = v.to_lowercase();
            if !doc.contains(&format!("`{shown}`")) {
                missing.push(format!("{name}::{v} (`{shown}`)"));
            }
        }
    }
    for t in ["char", "byte", "tokenizer_json"] {
        if !doc.contains(&format!("`{t}")) {
            missing.push(format!("tokenizer `{t}`"));
        }
    }
    assert!(
        missing.is_empty(),
        "choices not named in docs/run-config.md: {missing:?}"
    );
}

#[test]
fn every_diagnostic_code_has_a_row() {
    let doc = doc();
    let src = std::fs::read_to_string(root().join("runtime/src/config.rs")).expect("config.rs");
    let codes: BTreeSet<&str> = src
        .match_indices("\"config::")
        .map(|(i, _)| &src[i + 1..i + 1 + src[i + 1..].find('"').unwrap_or(0)])
        .collect();
    assert!(codes.len() >= 10, "{codes:?}");
    let missing: Vec<&&str> = codes
        .iter()
        .filter(|c| !doc.contains(&format!("| `{c}` |")))
        .collect();
    assert!(missing.is_empty(), "codes without a row: {missing:?}");
}

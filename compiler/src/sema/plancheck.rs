//! Parallelism plans: read a `plan NAME for CONFIG { ... }` into a typed `ParallelPlan` and check it
//! against the config it targets (divisibility of heads, layers and batch by the degrees).
//!
//! The planners (`plan/`) decide memory, recompute and sharding from the typed plan; this module
//! only makes sure the plan is well-formed and possible, pointing at the offending line.

use kiln_grammar::ast::{self, ExprKind};

use super::diag::{did_you_mean, FileId, Loc, SemaDiagnostic};
use super::eval::{Env, Eval};
use super::value::Value;
use super::Workspace;
use crate::ir::DType;

/// Which activations the backward pass recomputes instead of keeping.
#[derive(Clone, Debug, PartialEq)]
pub enum RecomputePolicy {
    None,
    /// Keep each layer's input only; recompute the layer in backward.
    Full,
    /// Megatron's selective recompute: recompute the attention core only.
    Selective,
    /// Keep the outputs of these op kinds (e.g. `matmul`), recompute the rest.
    Keep(Vec<String>),
    /// Keep what fits in this many bytes of activations, recomputing the fewest FLOPs.
    Budget(u64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParallelPlan {
    pub name: String,
    pub target: String,
    pub data: u64,
    pub tensor: u64,
    pub pipeline: u64,
    pub sequence: bool,
    /// ZeRO stage: 0 (none), 1 (optimizer state), 2 (+ gradients), 3 (+ parameters).
    pub zero: u64,
    pub microbatch: u64,
    /// Global batch in sequences, and sequence length.
    pub batch: Option<u64>,
    pub seq: Option<u64>,
    pub recompute: RecomputePolicy,
    pub device: Option<String>,
    /// Training precision: `bf16`/`f16` means 16-bit activations, parameters and gradients with
    /// f32 optimizer state and master weights (mixed precision); `f32` or unset means as declared.
    pub precision: Option<DType>,
    /// Where the plan is (its name) and each setting's line, for the planners' diagnostics.
    pub loc: Option<Loc>,
    pub entry_locs: Vec<(String, Loc)>,
}

pub const PLAN_KEYS: &[&str] = &[
    "data",
    "tensor",
    "pipeline",
    "sequence",
    "zero",
    "microbatch",
    "batch",
    "seq",
    "recompute",
    "device",
    "precision",
];
pub const KEEP_KINDS: &[&str] = &["matmul", "attention", "norm", "elementwise", "softmax"];

/// Reads and checks a plan; a well-formed plan is then planned (`plan::analysis::check_named`) so
/// that a layout that cannot fit its device is an error at the plan.
pub fn check_plan(ws: &Workspace, file: FileId, plan: &ast::PlanDef) -> Vec<SemaDiagnostic> {
    match read_plan(ws, file, plan) {
        Ok(p) => crate::plan::analysis::check_named(ws, &p),
        Err(ds) => ds,
    }
}

pub fn read_plan(
    ws: &Workspace,
    file: FileId,
    plan: &ast::PlanDef,
) -> Result<ParallelPlan, Vec<SemaDiagnostic>> {
    let loc = |span| Loc { file, span };
    let hp = ws
        .config_hparams(&plan.target.name, Some(loc(plan.target.span)))
        .map_err(|d| vec![d])?;
    let mut p = ParallelPlan {
        name: plan.name.name.clone(),
        target: plan.target.name.clone(),
        data: 1,
        tensor: 1,
        pipeline: 1,
        sequence: false,
        zero: 0,
        microbatch: 1,
        batch: None,
        seq: None,
        recompute: RecomputePolicy::None,
        device: None,
        precision: None,
        loc: Some(loc(plan.name.span)),
        entry_locs: plan
            .entries
            .iter()
            .map(|e| (e.key.name.clone(), loc(e.span)))
            .collect(),
    };
    let mut errs = Vec::new();
    let mut ev = Eval::new(ws, false);
    let mut seen: Vec<&str> = Vec::new();
    let mut entry_span = std::collections::HashMap::new();
    for e in &plan.entries {
        let key = e.key.name.as_str();
        if !PLAN_KEYS.contains(&key) {
            let mut d = ws.simple_diag(
                "plan::unknown_key",
                loc(e.key.span),
                format!("unknown plan setting `{key}`"),
            );
            d.help = Some(match did_you_mean(key, PLAN_KEYS.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("settings: {}", PLAN_KEYS.join(", ")),
            });
            errs.push(d);
            continue;
        }
        if seen.contains(&key) {
            errs.push(ws.simple_diag(
                "plan::duplicate_key",
                loc(e.key.span),
                format!("`{key}` is set twice"),
            ));
            continue;
        }
        seen.push(key);
        entry_span.insert(key, e.span);
        if key == "recompute" {
            match recompute(ws, &mut ev, file, &e.value) {
                Ok(r) => p.recompute = r,
                Err(d) => errs.push(d),
            }
            continue;
        }
        let mut env = Env::empty();
        let v = match ev.eval(file, &e.value, &mut env) {
            Ok(v) => v,
            Err(err) => {
                errs.push(ws.eval_diag(&err));
                continue;
            }
        };
        let vloc = loc(e.value.span);
        match key {
            "sequence" => match v {
                Value::Bool(b) => p.sequence = b,
                o => errs.push(ws.simple_diag(
                    "plan::type",
                    vloc,
                    format!("`sequence` is true or false, found {}", o.kind()),
                )),
            },
            "device" => match v {
                Value::Str(s) => p.device = Some(s),
                o => errs.push(ws.simple_diag(
                    "plan::type",
                    vloc,
                    format!("`device` is a string, found {}", o.kind()),
                )),
            },
            "precision" => match v {
                Value::DType(d @ (DType::F32 | DType::BF16 | DType::F16)) => p.precision = Some(d),
                o => {
                    let mut d = ws.simple_diag(
                        "plan::type",
                        vloc,
                        format!("`precision` is f32, bf16 or f16, found {o}"),
                    );
                    d.help = Some("bf16/f16 plan mixed precision: 16-bit activations, weights and gradients, f32 optimizer state".into());
                    errs.push(d);
                }
            },
            _ => {
                let n = match &v {
                    Value::Int(d) => d.as_const(),
                    _ => None,
                };
                let Some(n) = n.filter(|n| *n >= if key == "zero" { 0 } else { 1 }) else {
                    errs.push(ws.simple_diag(
                        "plan::type",
                        vloc,
                        format!(
                            "`{key}` must be a {} integer, found {v}",
                            if key == "zero" {
                                "non-negative"
                            } else {
                                "positive"
                            }
                        ),
                    ));
                    continue;
                };
                let n = n as u64;
                match key {
                    "data" => p.data = n,
                    "tensor" => p.tensor = n,
                    "pipeline" => p.pipeline = n,
                    "microbatch" => p.microbatch = n,
                    "batch" => p.batch = Some(n),
                    "seq" => p.seq = Some(n),
                    "zero" if n <= 3 => p.zero = n,
                    _ => errs.push(ws.simple_diag(
                        "plan::zero",
                        vloc,
                        format!("ZeRO has stages 0 to 3, found {n}"),
                    )),
                }
            }
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    // Divisibility against the model.
    let get = |k: &str| {
        hp.iter().find(|(n, _)| n == k).and_then(|(_, v)| match v {
            Value::Int(d) => d.as_const(),
            _ => None,
        })
    };
    let span_of = |k: &str| entry_span.get(k).copied().unwrap_or(plan.name.span);
    let mut check = |key: &str, what: &str, value: Option<i64>, degree: u64, help: &str| {
        if let Some(v) = value {
            if degree > 1 && v % degree as i64 != 0 {
                let mut d = ws.simple_diag(
                    "plan::not_divisible",
                    loc(span_of(key)),
                    format!("{what} ({v}) is not divisible by the {key} degree ({degree})"),
                );
                d.labels[0].text = format!("{key} = {degree}");
                d.help = Some(format!("{help}; `{}` has {what} = {v}", plan.target.name));
                errs.push(d);
            }
        }
    };
    check(
        "tensor",
        "heads",
        get("heads"),
        p.tensor,
        "tensor parallelism splits attention heads across devices",
    );
    if let Some(kv) = get("kv_heads") {
        // Key/value heads are split when there are enough of them, replicated when there is one.
        if kv > 1 {
            check(
                "tensor",
                "kv_heads",
                Some(kv),
                p.tensor,
                "grouped-query key/value heads are split across tensor-parallel devices",
            );
        }
    }
    check(
        "pipeline",
        "layers",
        get("layers"),
        p.pipeline,
        "pipeline stages hold equal numbers of layers",
    );
    if let Some(b) = p.batch {
        let per = p.data * p.microbatch;
        if per > 0 && b % per != 0 {
            let mut d = ws.simple_diag(
                "plan::not_divisible",
                loc(span_of("batch")),
                format!(
                    "batch ({b}) is not divisible by data × microbatch ({} × {})",
                    p.data, p.microbatch
                ),
            );
            d.help = Some("every data-parallel rank takes whole micro-batches".into());
            errs.push(d);
        }
    }
    if errs.is_empty() {
        Ok(p)
    } else {
        Err(errs)
    }
}

fn recompute(
    ws: &Workspace,
    ev: &mut Eval,
    file: FileId,
    e: &ast::Expr,
) -> Result<RecomputePolicy, SemaDiagnostic> {
    let loc = Loc { file, span: e.span };
    let bad = || {
        let mut d = ws.simple_diag("plan::recompute", loc, "unknown recompute policy".into());
        d.help = Some("policies: none, full, selective, keep(matmul, ...), budget(bytes)".into());
        d
    };
    match &e.kind {
        ExprKind::None => Ok(RecomputePolicy::None),
        ExprKind::Name(id) => match id.name.as_str() {
            "full" => Ok(RecomputePolicy::Full),
            "selective" => Ok(RecomputePolicy::Selective),
            "none" => Ok(RecomputePolicy::None),
            other => {
                let mut d = bad();
                if let Some(s) = did_you_mean(other, ["none", "full", "selective"]) {
                    d.help = Some(format!("did you mean `{s}`?"));
                }
                Err(d)
            }
        },
        ExprKind::Call { callee, args, .. } if callee.name == "keep" => {
            let mut kinds = Vec::new();
            for a in args {
                match &a.value.kind {
                    ExprKind::Name(id) if KEEP_KINDS.contains(&id.name.as_str()) => {
                        kinds.push(id.name.clone())
                    }
                    _ => {
                        let mut d = ws.simple_diag(
                            "plan::recompute",
                            Loc { file, span: a.span },
                            "`keep` lists op kinds".into(),
                        );
                        d.help = Some(format!("kinds: {}", KEEP_KINDS.join(", ")));
                        return Err(d);
                    }
                }
            }
            if kinds.is_empty() {
                return Err(ws.simple_diag(
                    "plan::recompute",
                    loc,
                    "`keep()` needs at least one op kind".into(),
                ));
            }
            Ok(RecomputePolicy::Keep(kinds))
        }
        ExprKind::Call { callee, args, .. } if callee.name == "budget" => {
            let [a] = args.as_slice() else {
                return Err(ws.simple_diag(
                    "plan::recompute",
                    loc,
                    "`budget` takes one size in bytes".into(),
                ));
            };
            let mut env = Env::empty();
            match ev.eval(file, &a.value, &mut env) {
                Ok(Value::Int(d)) if d.as_const().is_some_and(|n| n > 0) => {
                    Ok(RecomputePolicy::Budget(d.as_const().unwrap_or(0) as u64))
                }
                Ok(Value::Float(x)) if x > 0.0 && x.is_finite() => {
                    Ok(RecomputePolicy::Budget(x as u64))
                }
                Ok(v) => Err(ws.simple_diag(
                    "plan::recompute",
                    Loc { file, span: a.span },
                    format!("`budget` needs a positive size in bytes, found {v}"),
                )),
                Err(err) => Err(ws.eval_diag(&err)),
            }
        }
        _ => Err(bad()),
    }
}

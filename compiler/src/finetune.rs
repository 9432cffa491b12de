//! Fine-tuning as graph transforms on the forward graph, before autodiff: freezing parameters by
//! name pattern, and LoRA (Hu et al. 2021) on chosen linear layers.
//!
//! Both only rewrite the forward graph, so the training step built from it (`train::training_step`)
//! is smaller, not masked: a frozen parameter (`trainable = false`) gets no gradient ops and no
//! optimizer state, exactly as autodiff skips any frozen parameter. LoRA replaces each use
//! `y = x @ W` of a targeted weight `W [k, n]` by `y + (x @ A) @ B · (alpha / rank)` with new
//! trainable parameters `W.lora_a [k, rank]` (uniform ±1/√k, PEFT's Kaiming-uniform bound) and
//! `W.lora_b [rank, n]` (zeros, so the adapted model starts equal to the base), and freezes `W`.
//!
//! Adapters (Houlsby et al. 2019, as the T5 paper uses them) insert a residual bottleneck after a
//! chosen weight's product: `y + relu(y @ D) @ U` with `W.adapter_down` `D [n, dim]` (normal 0.02)
//! and `W.adapter_up` `U [dim, n]` (zeros: the adapted model starts equal to the base). Targeting
//! each block's feed-forward output weight (`*.ff.wo.weight`-style names) puts one after each
//! feed-forward block; with a bias, the adapter reads the product before the bias is added.
//!
//! Gradual unfreezing (Howard and Ruder 2018, as the T5 paper adapts it) is freezing by layer:
//! with `top_layers = n`, only the top `n` blocks of every repeated stack train (the encoder's
//! and the decoder's in parallel), together with every parameter outside the stacks (the shared
//! embedding and output matrices, final norms), which the paper updates throughout. The training
//! loop raises `n` episode by episode and rebuilds the step; each build is an ordinary frozen
//! graph. A block is recognised by its parameter names: `<stack>.<index>.<rest>` with the first
//! all-digit segment as the index (`h.3.attn.q.weight`, `decoder.5.ff.wo.weight`).
//!
//! What this module does not do: it does not pick targets (the run config names them), touch
//! weights used other than as the right operand of a plain `x @ W` (such a target is an error,
//! not silently skipped), or know about checkpoints (the runtime saves `*.lora_*` separately).

use crate::ir::{BinaryOp, Dim, Graph, Init, IrError, Op, ValueId};

/// Suffixes of the parameters LoRA adds to a weight `W`: `W.lora_a`, `W.lora_b`.
pub const LORA_A: &str = "lora_a";
pub const LORA_B: &str = "lora_b";

/// Suffixes of the parameters an adapter adds after a weight `W`.
pub const ADAPTER_DOWN: &str = "adapter_down";
pub const ADAPTER_UP: &str = "adapter_up";

/// Is `name` a parameter LoRA or an adapter added (saved apart from the base checkpoint)?
pub fn is_lora_param(name: &str) -> bool {
    [LORA_A, LORA_B, ADAPTER_DOWN, ADAPTER_UP]
        .iter()
        .any(|s| name.strip_suffix(s).is_some_and(|rest| rest.ends_with('.')))
}

/// Bottleneck adapters after the products of the weights matching `targets`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSpec {
    pub targets: Vec<String>,
    /// Bottleneck width.
    pub dim: usize,
}

/// LoRA on the weights whose names match `targets`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    /// Name patterns (`*` matches any run of characters) of the 2-D weights to adapt.
    pub targets: Vec<String>,
    pub rank: usize,
    pub alpha: f64,
}

/// What to change in a forward graph before the training step is built.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FinetuneSpec {
    /// Name patterns of base parameters to freeze (`*` freezes everything but LoRA weights).
    pub freeze: Vec<String>,
    pub lora: Option<LoraSpec>,
    pub adapters: Option<AdapterSpec>,
    /// Gradual unfreezing's current episode: only the top `n` blocks of each stack train.
    pub top_layers: Option<usize>,
}

/// The stack and block index of a parameter name (`h.3.attn.q.weight` → `("h", 3)`): the first
/// all-digit dot-separated segment and everything before it.
pub fn layer_of(name: &str) -> Option<(&str, usize)> {
    let mut at = 0;
    for seg in name.split('.') {
        if at > 0 && !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            return seg.parse().ok().map(|i| (&name[..at - 1], i));
        }
        at += seg.len() + 1;
    }
    None
}

/// Freezes every block below the top `n` of its stack (see the module doc); returns the names
/// frozen. Parameters outside the stacks are left as they are.
pub fn freeze_below_top(g: &mut Graph, n: usize) -> Vec<String> {
    let mut depth: std::collections::BTreeMap<String, usize> = Default::default();
    let params: Vec<(ValueId, String)> = g
        .params()
        .into_iter()
        .filter_map(|p| param_name(g, p).map(|s| (p, s.to_string())))
        .filter(|(_, s)| !s.starts_with("opt."))
        .collect();
    for (_, name) in &params {
        if let Some((stack, i)) = layer_of(name) {
            let d = depth.entry(stack.to_string()).or_insert(0);
            *d = (*d).max(i + 1);
        }
    }
    let mut frozen = Vec::new();
    for (p, name) in params {
        if let Some((stack, i)) = layer_of(&name) {
            if i + n < depth[stack] {
                set_trainable(g, p, false);
                frozen.push(name);
            }
        }
    }
    frozen
}

#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error("pattern `{pattern}` matches no parameter")]
    NoMatch { pattern: String },
    #[error("LoRA target `{name}` has shape {shape}; LoRA adapts 2-D weights")]
    NotMatrix { name: String, shape: String },
    #[error("LoRA target `{name}` is used other than as the weight of `x @ W` (by `{op}`)")]
    UnsupportedUse { name: String, op: String },
    #[error("LoRA rank must be at least 1")]
    Rank,
    #[error("the adapter dimension must be at least 1")]
    AdapterDim,
    #[error("LoRA alpha must be finite and positive, got {alpha}")]
    Alpha { alpha: f64 },
    #[error(transparent)]
    Ir(#[from] IrError),
}

/// `*`-glob match of a whole name.
pub fn matches(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn param_name(g: &Graph, p: ValueId) -> Option<&str> {
    match g.node(p).op() {
        Op::Param { name, .. } => Some(name),
        _ => None,
    }
}

/// Parameters matching any of `patterns`, by name; each pattern must match at least one.
fn select(
    g: &Graph,
    patterns: &[String],
    skip: impl Fn(&str) -> bool,
) -> Result<Vec<ValueId>, FinetuneError> {
    let params: Vec<(ValueId, String)> = g
        .params()
        .into_iter()
        .filter_map(|p| param_name(g, p).map(|n| (p, n.to_string())))
        .filter(|(_, n)| !skip(n))
        .collect();
    for pat in patterns {
        if !params.iter().any(|(_, n)| matches(pat, n)) {
            return Err(FinetuneError::NoMatch {
                pattern: pat.clone(),
            });
        }
    }
    Ok(params
        .into_iter()
        .filter(|(_, n)| patterns.iter().any(|pat| matches(pat, n)))
        .map(|(p, _)| p)
        .collect())
}

fn set_trainable(g: &mut Graph, p: ValueId, value: bool) {
    let ty = g.ty(p).clone();
    if let Op::Param {
        name,
        shape,
        dtype,
        init,
        ..
    } = g.node(p).op().clone()
    {
        g.set_op(
            p,
            Op::Param {
                name,
                shape,
                dtype,
                init,
                trainable: value,
            },
            ty,
        );
    }
}

/// Freezes the parameters matching `patterns` (LoRA weights excepted); returns their names.
pub fn freeze(g: &mut Graph, patterns: &[String]) -> Result<Vec<String>, FinetuneError> {
    let chosen = select(g, patterns, is_lora_param)?;
    let mut names = Vec::new();
    for p in chosen {
        set_trainable(g, p, false);
        names.extend(param_name(g, p).map(str::to_string));
    }
    Ok(names)
}

/// Adds LoRA to every weight matching `spec.targets` and freezes those weights; returns the
/// adapted weights' names.
pub fn apply_lora(g: &mut Graph, spec: &LoraSpec) -> Result<Vec<String>, FinetuneError> {
    if spec.rank == 0 {
        return Err(FinetuneError::Rank);
    }
    if !(spec.alpha.is_finite() && spec.alpha > 0.0) {
        return Err(FinetuneError::Alpha { alpha: spec.alpha });
    }
    let targets = select(g, &spec.targets, is_lora_param)?;
    let mut adapted = Vec::new();
    for w in targets {
        let name = param_name(g, w).unwrap_or_default().to_string();
        let shape = g.shape(w).clone();
        let dtype = g.dtype(w);
        let [k, n] = shape.as_slice() else {
            return Err(FinetuneError::NotMatrix {
                name,
                shape: format!("{shape:?}"),
            });
        };
        let (k, n) = (k.clone(), n.clone());
        let users = plain_products(g, w, &name)?;
        let r = Dim::c(spec.rank as i64);
        let bound = k
            .as_const()
            .map_or(0.02, |k| 1.0 / (k.max(1) as f64).sqrt());
        let a_name = format!("{name}.{LORA_A}");
        let b_name = format!("{name}.{LORA_B}");
        let label = Some(format!("{name}.lora"));
        let a = g.add(
            Op::Param {
                name: a_name.clone(),
                shape: vec![k, r.clone()],
                dtype,
                init: Init::Uniform {
                    low: -bound,
                    high: bound,
                },
                trainable: true,
            },
            &[],
            Some(a_name),
        )?;
        let b = g.add(
            Op::Param {
                name: b_name.clone(),
                shape: vec![r, n],
                dtype,
                init: Init::Zeros,
                trainable: true,
            },
            &[],
            Some(b_name),
        )?;
        let scale = g.add(
            Op::Constant {
                value: spec.alpha / spec.rank as f64,
                dtype,
            },
            &[],
            label.clone(),
        )?;
        for u in users {
            let x = g.node(u).inputs()[0];
            let mm = Op::MatMul {
                transpose_a: false,
                transpose_b: false,
            };
            let xa = g.add(mm.clone(), &[x, a], label.clone())?;
            let xab = g.add(mm, &[xa, b], label.clone())?;
            let out_shape = g.shape(xab).clone();
            let s = g.add(
                Op::Broadcast {
                    shape: out_shape.clone(),
                    axes: (0..out_shape.len()).collect(),
                },
                &[scale],
                label.clone(),
            )?;
            let delta = g.add(Op::Binary(BinaryOp::Mul), &[xab, s], label.clone())?;
            let name_u = g.node(u).name().map(str::to_string);
            let sum = g.add(Op::Binary(BinaryOp::Add), &[u, delta], name_u)?;
            // Every use of the base product now reads the adapted one, except the sum itself.
            g.replace_all_uses(u, sum);
            g.set_inputs(sum, &[u, delta]);
        }
        set_trainable(g, w, false);
        adapted.push(name);
    }
    Ok(adapted)
}

/// The plain products `x @ W` of weight `w` (an error if `w` is used any other way).
fn plain_products(g: &Graph, w: ValueId, name: &str) -> Result<Vec<ValueId>, FinetuneError> {
    let users = g.users(w);
    for &u in &users {
        let plain = matches!(
            g.node(u).op(),
            Op::MatMul {
                transpose_a: false,
                transpose_b: false
            }
        ) && g.node(u).inputs().get(1) == Some(&w)
            && g.node(u).inputs().first() != Some(&w);
        if !plain {
            return Err(FinetuneError::UnsupportedUse {
                name: name.to_string(),
                op: g.node(u).op().name().to_string(),
            });
        }
    }
    Ok(users)
}

/// A scalar constant broadcast to the shape of `like`.
fn spread_const(
    g: &mut Graph,
    value: f64,
    like: ValueId,
    label: &Option<String>,
) -> Result<ValueId, IrError> {
    let dtype = g.dtype(like);
    let shape = g.shape(like).clone();
    let c = g.add(Op::Constant { value, dtype }, &[], label.clone())?;
    g.add(
        Op::Broadcast {
            axes: (0..shape.len()).collect(),
            shape,
        },
        &[c],
        label.clone(),
    )
}

/// Adds a bottleneck adapter after every product of each weight matching `spec.targets`;
/// returns the targeted weights' names. The weights themselves are left as they are (freeze them
/// with [`freeze`]).
pub fn apply_adapters(g: &mut Graph, spec: &AdapterSpec) -> Result<Vec<String>, FinetuneError> {
    if spec.dim == 0 {
        return Err(FinetuneError::AdapterDim);
    }
    let targets = select(g, &spec.targets, is_lora_param)?;
    let mut adapted = Vec::new();
    for w in targets {
        let name = param_name(g, w).unwrap_or_default().to_string();
        let shape = g.shape(w).clone();
        let dtype = g.dtype(w);
        let [_, n] = shape.as_slice() else {
            return Err(FinetuneError::NotMatrix {
                name,
                shape: format!("{shape:?}"),
            });
        };
        let n = n.clone();
        let users = plain_products(g, w, &name)?;
        let m = Dim::c(spec.dim as i64);
        let down_name = format!("{name}.{ADAPTER_DOWN}");
        let up_name = format!("{name}.{ADAPTER_UP}");
        let label = Some(format!("{name}.adapter"));
        let down = g.add(
            Op::Param {
                name: down_name.clone(),
                shape: vec![n.clone(), m.clone()],
                dtype,
                init: Init::Normal { std: 0.02 },
                trainable: true,
            },
            &[],
            Some(down_name),
        )?;
        let up = g.add(
            Op::Param {
                name: up_name.clone(),
                shape: vec![m, n],
                dtype,
                init: Init::Zeros,
                trainable: true,
            },
            &[],
            Some(up_name),
        )?;
        for y in users {
            let mm = Op::MatMul {
                transpose_a: false,
                transpose_b: false,
            };
            let down_y = g.add(mm.clone(), &[y, down], label.clone())?;
            let zero = spread_const(g, 0.0, down_y, &label)?;
            let h = g.add(Op::Binary(BinaryOp::Max), &[down_y, zero], label.clone())?;
            let delta = g.add(mm, &[h, up], label.clone())?;
            let name_y = g.node(y).name().map(str::to_string);
            let sum = g.add(Op::Binary(BinaryOp::Add), &[y, delta], name_y)?;
            g.replace_all_uses(y, sum);
            // The adapter and the sum read the product itself, not the sum.
            g.set_inputs(down_y, &[y, down]);
            g.set_inputs(sum, &[y, delta]);
        }
        adapted.push(name);
    }
    Ok(adapted)
}

/// Applies a fine-tuning spec: LoRA and adapters first (their weights are never frozen by
/// `freeze`), then freezing.
pub fn apply(g: &mut Graph, spec: &FinetuneSpec) -> Result<(), FinetuneError> {
    if let Some(lora) = &spec.lora {
        apply_lora(g, lora)?;
    }
    if let Some(adapters) = &spec.adapters {
        apply_adapters(g, adapters)?;
    }
    if !spec.freeze.is_empty() {
        freeze(g, &spec.freeze)?;
    }
    if let Some(n) = spec.top_layers {
        freeze_below_top(g, n);
    }
    Ok(())
}

/// Parameter elements of a graph: (trainable, total). Dims must be constant (bound graphs).
pub fn param_elements(g: &Graph) -> (u64, u64) {
    let mut trainable = 0u64;
    let mut total = 0u64;
    for p in g.params() {
        if let Op::Param {
            shape,
            trainable: t,
            ..
        } = g.node(p).op()
        {
            if param_name(g, p).is_some_and(|n| n.starts_with("opt.")) {
                continue;
            }
            let n: u64 = shape
                .iter()
                .map(|d| d.as_const().map_or(0, |c| c.max(0) as u64))
                .product();
            total += n;
            if *t {
                trainable += n;
            }
        }
    }
    (trainable, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(matches("*", "h.0.attn.q.weight"));
        assert!(matches("h.*.attn.q.weight", "h.10.attn.q.weight"));
        assert!(matches("*.attn.*.weight", "h.0.attn.v.weight"));
        assert!(!matches("*.attn.*.weight", "h.0.attn.v.bias"));
        assert!(!matches("h.1.*", "h.0.attn"));
        assert!(matches("wte", "wte"));
        assert!(!matches("wte", "wtex"));
        assert!(!matches("a*a", "a"));
    }
}

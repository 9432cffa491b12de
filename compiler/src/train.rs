//! One compiled training step = forward + loss + backward + gradient clipping + optimizer update.
//!
//! The optimizer is part of the graph (not host code) so that the compiler sees, fuses and plans
//! the whole step: each parameter's AdamW update becomes one kernel. Optimizer state lives in
//! frozen parameters named `opt.m.<param>` / `opt.v.<param>` (`opt.buf.<param>` for SGD momentum),
//! zero-initialised, updated through the graph's state updates like the parameters themselves.
//!
//! Run-time scalars are graph inputs: `lr` (this step's learning rate, from the schedule) and
//! `step` (t = 1, 2, ... for Adam's bias correction), both f32 scalars.
//!
//! The update follows `torch.optim.AdamW` exactly:
//! `p ← p·(1 − lr·wd) − (lr / (1 − β1ᵗ)) · m / (√v / √(1 − β2ᵗ) + ε)`, with `m`, `v` updated first;
//! and `clip_grad_norm_`: `g ← g · min(1, max_norm / (‖g‖ + 1e-6))` over all gradients.

use crate::autodiff;
use crate::ir::{BinaryOp, DType, Graph, Init, IrError, Op, Shape, UnaryOp, ValueId};

#[derive(Clone, Debug, PartialEq)]
pub enum Optimizer {
    AdamW {
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
    Sgd {
        momentum: f64,
        weight_decay: f64,
    },
}

/// Which parameters get weight decay. By default none of the 1-D ones (norm scales, biases) and no
/// lookup tables (embeddings); nanoGPT decays embeddings, so that is a switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecayRule {
    pub embeddings: bool,
}

impl Default for DecayRule {
    fn default() -> Self {
        DecayRule { embeddings: false }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct StepOptions {
    pub optimizer: Optimizer,
    pub decay: DecayRule,
    /// Clip the global gradient norm to this value.
    pub clip: Option<f64>,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            optimizer: Optimizer::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            },
            decay: DecayRule::default(),
            clip: None,
        }
    }
}

/// Does this parameter get weight decay under `rule`?
pub fn decays(g: &Graph, p: ValueId, rule: DecayRule) -> bool {
    if g.shape(p).len() < 2 {
        return false;
    }
    let is_table = g.users(p).iter().any(|u| {
        let n = g.node(*u);
        matches!(n.op(), Op::Gather) && n.inputs().first() == Some(&p)
            || matches!(n.op(), Op::Slice { axis: 0, .. })
    });
    rule.embeddings || !is_table
}

struct B<'g> {
    g: &'g mut Graph,
}

impl B<'_> {
    fn add(&mut self, op: Op, ins: &[ValueId], name: &str) -> Result<ValueId, IrError> {
        self.g.add(op, ins, Some(name.to_string()))
    }
    fn scalar(&mut self, v: f64, name: &str) -> Result<ValueId, IrError> {
        self.add(
            Op::Constant {
                value: v,
                dtype: DType::F32,
            },
            &[],
            name,
        )
    }
    fn bin(
        &mut self,
        op: BinaryOp,
        a: ValueId,
        b: ValueId,
        name: &str,
    ) -> Result<ValueId, IrError> {
        self.add(Op::Binary(op), &[a, b], name)
    }
    fn un(&mut self, op: UnaryOp, a: ValueId, name: &str) -> Result<ValueId, IrError> {
        self.add(Op::Unary(op), &[a], name)
    }
    /// A scalar broadcast to `shape`.
    fn spread(&mut self, s: ValueId, shape: &Shape, name: &str) -> Result<ValueId, IrError> {
        if shape.is_empty() {
            return Ok(s);
        }
        self.add(
            Op::Broadcast {
                shape: shape.clone(),
                axes: (0..shape.len()).collect(),
            },
            &[s],
            name,
        )
    }
    /// `a * s` for a scalar `s`.
    fn scale(&mut self, a: ValueId, s: ValueId, name: &str) -> Result<ValueId, IrError> {
        let shape = self.g.shape(a).clone();
        let sb = self.spread(s, &shape, name)?;
        self.bin(BinaryOp::Mul, a, sb, name)
    }
    fn state(&mut self, name: String, shape: &Shape) -> Result<ValueId, IrError> {
        self.add(
            Op::Param {
                name: name.clone(),
                shape: shape.clone(),
                dtype: DType::F32,
                init: Init::Zeros,
                trainable: false,
            },
            &[],
            &name,
        )
    }
}

/// Build the training step from a forward graph whose output `loss` is a scalar.
pub fn training_step(forward: &Graph, opts: &StepOptions) -> Result<Graph, IrError> {
    let loss = forward.output("loss").ok_or(IrError::NotFound {
        kind: "output",
        name: "loss".into(),
    })?;
    let grads = autodiff::grad(forward, loss)?;
    let mut g = grads.graph;
    let mut b = B { g: &mut g };
    let lr = b.add(
        Op::Input {
            name: "lr".into(),
            shape: vec![],
            dtype: DType::F32,
        },
        &[],
        "lr",
    )?;
    let step = b.add(
        Op::Input {
            name: "step".into(),
            shape: vec![],
            dtype: DType::F32,
        },
        &[],
        "step",
    )?;

    // Global gradient norm (always reported; used to clip when asked).
    let mut sq: Option<ValueId> = None;
    for (name, gv) in &grads.grads {
        let path = format!("optim.norm.{name}");
        let rank = b.g.shape(*gv).len();
        let g2 = b.bin(BinaryOp::Mul, *gv, *gv, &path)?;
        let s = b.add(
            Op::ReduceSum {
                axes: (0..rank).collect(),
                keepdim: false,
            },
            &[g2],
            &path,
        )?;
        sq = Some(match sq {
            None => s,
            Some(acc) => b.bin(BinaryOp::Add, acc, s, "optim.norm")?,
        });
    }
    let Some(sq) = sq else {
        return Err(IrError::Autodiff {
            detail: "no trainable parameter reaches the loss".into(),
        });
    };
    let norm = b.un(UnaryOp::Sqrt, sq, "optim.norm")?;
    let clip_scale = match opts.clip {
        Some(max_norm) => {
            let eps = b.scalar(1e-6, "optim.clip")?;
            let denom = b.bin(BinaryOp::Add, norm, eps, "optim.clip")?;
            let maxn = b.scalar(max_norm, "optim.clip")?;
            let coef = b.bin(BinaryOp::Div, maxn, denom, "optim.clip")?;
            let one = b.scalar(1.0, "optim.clip")?;
            Some(b.bin(BinaryOp::Min, coef, one, "optim.clip")?)
        }
        None => None,
    };

    let params: Vec<(String, ValueId)> =
        grads.grads.iter().map(|(n, gv)| (n.clone(), *gv)).collect();
    match &opts.optimizer {
        Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            // Bias corrections from the step input: 1 − βᵗ = 1 − exp(t · ln β).
            let bc = |b: &mut B, beta: f64, name: &str| -> Result<ValueId, IrError> {
                let lnb = b.scalar(beta.ln(), name)?;
                let tl = b.bin(BinaryOp::Mul, step, lnb, name)?;
                let pw = b.un(UnaryOp::Exp, tl, name)?;
                let one = b.scalar(1.0, name)?;
                b.bin(BinaryOp::Sub, one, pw, name)
            };
            let bc1 = bc(&mut b, *beta1, "optim.bias_correction1")?;
            let bc2 = bc(&mut b, *beta2, "optim.bias_correction2")?;
            let step_size = b.bin(BinaryOp::Div, lr, bc1, "optim.step_size")?;
            let bc2_sqrt = b.un(UnaryOp::Sqrt, bc2, "optim.bias_correction2")?;
            let one = b.scalar(1.0, "optim")?;
            let wd = b.scalar(*weight_decay, "optim")?;
            let lr_wd = b.bin(BinaryOp::Mul, lr, wd, "optim")?;
            let decay_keep = b.bin(BinaryOp::Sub, one, lr_wd, "optim")?;
            let c_b1 = b.scalar(*beta1, "optim")?;
            let c_1mb1 = b.scalar(1.0 - beta1, "optim")?;
            let c_b2 = b.scalar(*beta2, "optim")?;
            let c_1mb2 = b.scalar(1.0 - beta2, "optim")?;
            let c_eps = b.scalar(*eps, "optim")?;
            for (name, gv) in params {
                let path = format!("optim.{name}");
                let p = b.g.find_param(&name).ok_or(IrError::NotFound {
                    kind: "param",
                    name: name.clone(),
                })?;
                let shape = b.g.shape(p).clone();
                let gv = match clip_scale {
                    Some(c) => b.scale(gv, c, &path)?,
                    None => gv,
                };
                let m = b.state(format!("opt.m.{name}"), &shape)?;
                let v = b.state(format!("opt.v.{name}"), &shape)?;
                // m' = β1·m + (1−β1)·g ; v' = β2·v + (1−β2)·g²
                let m1 = b.scale(m, c_b1, &path)?;
                let g1 = b.scale(gv, c_1mb1, &path)?;
                let m_new = b.bin(BinaryOp::Add, m1, g1, &path)?;
                let v1 = b.scale(v, c_b2, &path)?;
                let gg = b.bin(BinaryOp::Mul, gv, gv, &path)?;
                let g2 = b.scale(gg, c_1mb2, &path)?;
                let v_new = b.bin(BinaryOp::Add, v1, g2, &path)?;
                // denom = √v' / √bc2 + ε ; p' = p·(1 − lr·wd) − step_size · m' / denom
                let sv = b.un(UnaryOp::Sqrt, v_new, &path)?;
                let bc2s = b.spread(bc2_sqrt, &shape, &path)?;
                let sv = b.bin(BinaryOp::Div, sv, bc2s, &path)?;
                let epsb = b.spread(c_eps, &shape, &path)?;
                let denom = b.bin(BinaryOp::Add, sv, epsb, &path)?;
                let ratio = b.bin(BinaryOp::Div, m_new, denom, &path)?;
                let upd = b.scale(ratio, step_size, &path)?;
                let kept = if decays(b.g, p, opts.decay) && *weight_decay != 0.0 {
                    b.scale(p, decay_keep, &path)?
                } else {
                    p
                };
                let p_new = b.bin(BinaryOp::Sub, kept, upd, &path)?;
                b.g.add_update(&name, p_new)?;
                b.g.add_update(&format!("opt.m.{name}"), m_new)?;
                b.g.add_update(&format!("opt.v.{name}"), v_new)?;
            }
        }
        Optimizer::Sgd {
            momentum,
            weight_decay,
        } => {
            let c_mom = b.scalar(*momentum, "optim")?;
            let c_wd = b.scalar(*weight_decay, "optim")?;
            for (name, gv) in params {
                let path = format!("optim.{name}");
                let p = b.g.find_param(&name).ok_or(IrError::NotFound {
                    kind: "param",
                    name: name.clone(),
                })?;
                let shape = b.g.shape(p).clone();
                let mut gv = match clip_scale {
                    Some(c) => b.scale(gv, c, &path)?,
                    None => gv,
                };
                // torch.optim.SGD: g ← g + wd·p ; buf ← μ·buf + g ; p ← p − lr·buf
                if *weight_decay != 0.0 && decays(b.g, p, opts.decay) {
                    let wp = b.scale(p, c_wd, &path)?;
                    gv = b.bin(BinaryOp::Add, gv, wp, &path)?;
                }
                let dir = if *momentum != 0.0 {
                    let buf = b.state(format!("opt.buf.{name}"), &shape)?;
                    let mb = b.scale(buf, c_mom, &path)?;
                    let nb = b.bin(BinaryOp::Add, mb, gv, &path)?;
                    b.g.add_update(&format!("opt.buf.{name}"), nb)?;
                    nb
                } else {
                    gv
                };
                let upd = b.scale(dir, lr, &path)?;
                let p_new = b.bin(BinaryOp::Sub, p, upd, &path)?;
                b.g.add_update(&name, p_new)?;
            }
        }
    }
    g.add_output("grad_norm", norm)?;
    // The step's outputs are the loss and the norm; gradients are consumed by the update.
    let keep: Vec<(String, ValueId)> = g
        .outputs()
        .iter()
        .filter(|o| !o.name.starts_with("grad."))
        .map(|o| (o.name.clone(), o.value))
        .collect();
    g.clear_outputs();
    for (n, v) in keep {
        g.add_output(&n, v)?;
    }
    Ok(g)
}

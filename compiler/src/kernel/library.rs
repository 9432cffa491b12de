//! Hand-written row programs for the fused regions every transformer needs: what fusion emits
//! when it recognises these patterns, and the conformance cases every backend is tested on.
//!
//! Conventions: `x`-like operands are `[rows, cols]` with one token per row and the feature (or
//! vocabulary, or key) axis along columns; hyperparameters that change during training (learning
//! rate, dropout seed and step) are `Scalar` inputs so that one compiled kernel serves every step;
//! model constants (eps) are IR constants.

use super::row::{
    CmpOp, DType, IndexKind, InputAccess, OutputAccess, RowBuilder, RowProgram, ValueId,
};

use DType::{F32, I32};
use InputAccess::{Full, PerCol, PerRow, Scalar};

fn done(b: RowBuilder) -> RowProgram {
    // The programs below are fixed; a validation failure is a bug in this file, caught by the
    // tests that run every library program.
    b.finish().expect("library row programs are valid")
}

/// `x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))` (GPT-2's GELU).
fn gelu_tanh(b: &mut RowBuilder, x: ValueId) -> ValueId {
    let c = b.f32(0.797_884_6);
    let k = b.f32(0.044_715);
    let half = b.f32(0.5);
    let x2 = b.mul(x, x);
    let kx2 = b.mul(k, x2);
    let inner = b.fma(kx2, x, x);
    let arg = b.mul(c, inner);
    let t = b.tanh(arg);
    let hx = b.mul(half, x);
    // hx * (1 + t) as one fma.
    b.fma(hx, t, hx)
}

/// `x * Φ(x) = 0.5 x (1 + erf(x / sqrt 2))` (exact GELU).
fn gelu_erf(b: &mut RowBuilder, x: ValueId) -> ValueId {
    let inv_sqrt2 = b.f32(std::f32::consts::FRAC_1_SQRT_2);
    let half = b.f32(0.5);
    let z = b.mul(x, inv_sqrt2);
    let e = b.erf(z);
    let hx = b.mul(half, x);
    b.fma(hx, e, hx)
}

/// `y = gelu_tanh(x + bias)`.
pub fn bias_gelu_tanh() -> RowProgram {
    let mut b = RowBuilder::new("bias_gelu_tanh");
    let x = b.load_input("x", F32, Full);
    let bias = b.load_input("bias", F32, PerCol);
    let h = b.add(x, bias);
    let y = gelu_tanh(&mut b, h);
    b.output("y", OutputAccess::Full, y);
    done(b)
}

/// `y = gelu_erf(x + bias)`.
pub fn bias_gelu_erf() -> RowProgram {
    let mut b = RowBuilder::new("bias_gelu_erf");
    let x = b.load_input("x", F32, Full);
    let bias = b.load_input("bias", F32, PerCol);
    let h = b.add(x, bias);
    let y = gelu_erf(&mut b, h);
    b.output("y", OutputAccess::Full, y);
    done(b)
}

/// Backward of exact GELU at pre-activation `h`: `dh = dy * (Φ(h) + h φ(h))`, plus the bias
/// gradient `Σ_rows dh`.
pub fn gelu_erf_bwd() -> RowProgram {
    let mut b = RowBuilder::new("gelu_erf_bwd");
    let h = b.load_input("h", F32, Full);
    let dy = b.load_input("dy", F32, Full);
    let inv_sqrt2 = b.f32(std::f32::consts::FRAC_1_SQRT_2);
    let half = b.f32(0.5);
    let neg_half = b.f32(-0.5);
    let inv_sqrt_2pi = b.f32(0.398_942_3);
    let z = b.mul(h, inv_sqrt2);
    let e = b.erf(z);
    let cdf = b.fma(half, e, half);
    let h2 = b.mul(h, h);
    let a = b.mul(neg_half, h2);
    let ea = b.exp(a);
    let pdf = b.mul(inv_sqrt_2pi, ea);
    let d = b.fma(h, pdf, cdf);
    let dh = b.mul(dy, d);
    b.output("dh", OutputAccess::Full, dh);
    b.output("dbias", OutputAccess::ColSum, dh);
    done(b)
}

/// SwiGLU's gate: `y = silu(gate) * up = gate * sigmoid(gate) * up`.
pub fn swiglu_fwd() -> RowProgram {
    let mut b = RowBuilder::new("swiglu_fwd");
    let g = b.load_input("gate", F32, Full);
    let u = b.load_input("up", F32, Full);
    let s = b.sigmoid(g);
    let silu = b.mul(g, s);
    let y = b.mul(silu, u);
    b.output("y", OutputAccess::Full, y);
    done(b)
}

/// Backward of [`swiglu_fwd`]: `dgate = dy * up * s (1 + g (1 - s))`, `dup = dy * g * s`.
pub fn swiglu_bwd() -> RowProgram {
    let mut b = RowBuilder::new("swiglu_bwd");
    let g = b.load_input("gate", F32, Full);
    let u = b.load_input("up", F32, Full);
    let dy = b.load_input("dy", F32, Full);
    let one = b.f32(1.0);
    let s = b.sigmoid(g);
    let silu = b.mul(g, s);
    let one_minus_s = b.sub(one, s);
    let t = b.fma(g, one_minus_s, one);
    let dsilu = b.mul(s, t);
    let dyu = b.mul(dy, u);
    let dg = b.mul(dyu, dsilu);
    let du = b.mul(dy, silu);
    b.output("dgate", OutputAccess::Full, dg);
    b.output("dup", OutputAccess::Full, du);
    done(b)
}

/// `y = a + b`.
pub fn residual_add() -> RowProgram {
    let mut b = RowBuilder::new("residual_add");
    let x = b.load_input("a", F32, Full);
    let y = b.load_input("b", F32, Full);
    let s = b.add(x, y);
    b.output("y", OutputAccess::Full, s);
    done(b)
}

/// LayerNorm forward with gain and bias; also writes the per-row mean and `rstd` for backward.
/// Two-pass variance (`Σ (x - mean)^2`), not `E[x²] - mean²`, for accuracy.
pub fn layernorm_fwd(eps: f32) -> RowProgram {
    let mut b = RowBuilder::new("layernorm_fwd");
    let x = b.load_input("x", F32, Full);
    let gamma = b.load_input("gamma", F32, PerCol);
    let beta = b.load_input("beta", F32, PerCol);
    let n = b.cols_f32();
    let inv_n = b.recip(n);
    let eps = b.f32(eps);
    let sum = b.row_sum(x);
    let mean = b.mul(sum, inv_n);
    let d = b.sub(x, mean);
    let d2 = b.mul(d, d);
    let ss = b.row_sum(d2);
    let var = b.mul(ss, inv_n);
    let ve = b.add(var, eps);
    let rstd = b.rsqrt(ve);
    let xhat = b.mul(d, rstd);
    let y = b.fma(xhat, gamma, beta);
    b.output("y", OutputAccess::Full, y);
    b.output("mean", OutputAccess::PerRow, mean);
    b.output("rstd", OutputAccess::PerRow, rstd);
    done(b)
}

/// LayerNorm backward: `dx = rstd (g - mean(g) - xhat mean(g xhat))` with `g = dy * gamma`, and
/// the parameter gradients `dgamma = Σ_rows dy xhat`, `dbeta = Σ_rows dy`.
pub fn layernorm_bwd() -> RowProgram {
    let mut b = RowBuilder::new("layernorm_bwd");
    let x = b.load_input("x", F32, Full);
    let dy = b.load_input("dy", F32, Full);
    let gamma = b.load_input("gamma", F32, PerCol);
    let mean = b.load_input("mean", F32, PerRow);
    let rstd = b.load_input("rstd", F32, PerRow);
    let n = b.cols_f32();
    let inv_n = b.recip(n);
    let d = b.sub(x, mean);
    let xhat = b.mul(d, rstd);
    let g = b.mul(dy, gamma);
    let gx = b.mul(g, xhat);
    let sg = b.row_sum(g);
    let sgx = b.row_sum(gx);
    let mg = b.mul(sg, inv_n);
    let mgx = b.mul(sgx, inv_n);
    let t = b.sub(g, mg);
    let u = b.mul(xhat, mgx);
    let v = b.sub(t, u);
    let dx = b.mul(v, rstd);
    let dyx = b.mul(dy, xhat);
    b.output("dx", OutputAccess::Full, dx);
    b.output("dgamma", OutputAccess::ColSum, dyx);
    b.output("dbeta", OutputAccess::ColSum, dy);
    done(b)
}

/// RMSNorm forward: `y = x * rsqrt(mean(x²) + eps) * gamma`; also writes the per-row `rrms`.
pub fn rmsnorm_fwd(eps: f32) -> RowProgram {
    let mut b = RowBuilder::new("rmsnorm_fwd");
    let x = b.load_input("x", F32, Full);
    let gamma = b.load_input("gamma", F32, PerCol);
    let n = b.cols_f32();
    let inv_n = b.recip(n);
    let eps = b.f32(eps);
    let x2 = b.mul(x, x);
    let ss = b.row_sum(x2);
    let ms = b.mul(ss, inv_n);
    let mse = b.add(ms, eps);
    let rrms = b.rsqrt(mse);
    let xr = b.mul(x, rrms);
    let y = b.mul(xr, gamma);
    b.output("y", OutputAccess::Full, y);
    b.output("rrms", OutputAccess::PerRow, rrms);
    done(b)
}

/// RMSNorm backward: `dx = rrms (g - x rrms² mean(g x))` with `g = dy * gamma`, and
/// `dgamma = Σ_rows dy x rrms`.
pub fn rmsnorm_bwd() -> RowProgram {
    let mut b = RowBuilder::new("rmsnorm_bwd");
    let x = b.load_input("x", F32, Full);
    let dy = b.load_input("dy", F32, Full);
    let gamma = b.load_input("gamma", F32, PerCol);
    let rrms = b.load_input("rrms", F32, PerRow);
    let n = b.cols_f32();
    let inv_n = b.recip(n);
    let g = b.mul(dy, gamma);
    let gx = b.mul(g, x);
    let sgx = b.row_sum(gx);
    let mgx = b.mul(sgx, inv_n);
    let r2 = b.mul(rrms, rrms);
    let c = b.mul(r2, mgx);
    let xc = b.mul(x, c);
    let t = b.sub(g, xc);
    let dx = b.mul(t, rrms);
    let xr = b.mul(x, rrms);
    let dgx = b.mul(dy, xr);
    b.output("dx", OutputAccess::Full, dx);
    b.output("dgamma", OutputAccess::ColSum, dgx);
    done(b)
}

/// Attention-score softmax with scale and a causal mask: row `r` is query `r % q_len` of its
/// (batch, head); columns are the `cols` keys, of which the last `q_len` are the queries' own
/// positions, so query `q` sees keys `c <= q + cols - q_len`.
pub fn softmax_causal() -> RowProgram {
    let mut b = RowBuilder::new("softmax_causal");
    let s = b.load_input("scores", F32, Full);
    let scale = b.load_input("scale", F32, Scalar);
    let q_len = b.load_input("q_len", I32, Scalar);
    let row = b.index(IndexKind::Row);
    let col = b.index(IndexKind::Col);
    let cols = b.index(IndexKind::Cols);
    let q = b.binary(super::row::BinaryOp::Rem, row, q_len);
    let offset = b.sub(cols, q_len);
    let last = b.add(q, offset);
    let masked = b.cmp(CmpOp::Gt, col, last);
    let neg_inf = b.f32(f32::NEG_INFINITY);
    let scaled = b.mul(s, scale);
    let z = b.select(masked, neg_inf, scaled);
    let m = b.row_max(z);
    let zm = b.sub(z, m);
    let e = b.exp(zm);
    let sum = b.row_sum(e);
    let inv = b.recip(sum);
    let p = b.mul(e, inv);
    b.output("probs", OutputAccess::Full, p);
    done(b)
}

/// Backward of a scaled softmax: `dscores = scale * y * (dy - Σ dy y)`.
pub fn softmax_bwd() -> RowProgram {
    let mut b = RowBuilder::new("softmax_bwd");
    let y = b.load_input("probs", F32, Full);
    let dy = b.load_input("dprobs", F32, Full);
    let scale = b.load_input("scale", F32, Scalar);
    let dyy = b.mul(dy, y);
    let s = b.row_sum(dyy);
    let d = b.sub(dy, s);
    let yd = b.mul(y, d);
    let dx = b.mul(yd, scale);
    b.output("dscores", OutputAccess::Full, dx);
    done(b)
}

/// Cross-entropy with its softmax, per row: `loss = logsumexp(x) - x[label]`; rows whose label is
/// negative (ignored positions) get loss 0. Writes the per-row loss, the per-row logsumexp (for
/// backward) and `Σ_rows loss * loss_scale` (pass `1 / valid_rows` for the mean).
pub fn cross_entropy_fwd() -> RowProgram {
    let mut b = RowBuilder::new("cross_entropy_fwd");
    let x = b.load_input("logits", F32, Full);
    let label = b.load_input("labels", I32, PerRow);
    let loss_scale = b.load_input("loss_scale", F32, Scalar);
    let m = b.row_max(x);
    let xm = b.sub(x, m);
    let e = b.exp(xm);
    let s = b.row_sum(e);
    let ls = b.log(s);
    let lse = b.add(ls, m);
    let col = b.index(IndexKind::Col);
    let is_target = b.cmp(CmpOp::Eq, col, label);
    let zero = b.f32(0.0);
    let picked = b.select(is_target, x, zero);
    let x_target = b.row_sum(picked);
    let raw = b.sub(lse, x_target);
    let zero_i = b.i32(0);
    let valid = b.cmp(CmpOp::Ge, label, zero_i);
    let loss = b.select(valid, raw, zero);
    let scaled = b.mul(loss, loss_scale);
    b.output("loss", OutputAccess::PerRow, loss);
    b.output("lse", OutputAccess::PerRow, lse);
    b.output("loss_sum", OutputAccess::Sum, scaled);
    done(b)
}

/// Backward of [`cross_entropy_fwd`]: `dlogits = (softmax(x) - onehot(label)) * dloss`, zero on
/// ignored rows; `dloss` is the gradient of each row's loss (`1 / valid_rows` for a mean).
pub fn cross_entropy_bwd() -> RowProgram {
    let mut b = RowBuilder::new("cross_entropy_bwd");
    let x = b.load_input("logits", F32, Full);
    let lse = b.load_input("lse", F32, PerRow);
    let label = b.load_input("labels", I32, PerRow);
    let dloss = b.load_input("dloss", F32, Scalar);
    let xl = b.sub(x, lse);
    let p = b.exp(xl);
    let col = b.index(IndexKind::Col);
    let is_target = b.cmp(CmpOp::Eq, col, label);
    let one = b.f32(1.0);
    let zero = b.f32(0.0);
    let onehot = b.select(is_target, one, zero);
    let d = b.sub(p, onehot);
    let zero_i = b.i32(0);
    let valid = b.cmp(CmpOp::Ge, label, zero_i);
    let scale = b.select(valid, dloss, zero);
    let dx = b.mul(d, scale);
    b.output("dlogits", OutputAccess::Full, dx);
    done(b)
}

/// One AdamW step on a parameter group (decoupled weight decay):
/// `m' = b1 m + (1-b1) g`, `v' = b2 v + (1-b2) g²`,
/// `p' = p - lr (m' bc1 / (sqrt(v' bc2) + eps) + wd p)` with `bc1 = 1/(1-b1^t)`, `bc2 = 1/(1-b2^t)`
/// and `g = grad * grad_scale` (global-norm clipping and loss scaling).
pub fn adamw() -> RowProgram {
    let mut b = RowBuilder::new("adamw");
    let p = b.load_input("param", F32, Full);
    let g0 = b.load_input("grad", F32, Full);
    let m = b.load_input("m", F32, Full);
    let v = b.load_input("v", F32, Full);
    let lr = b.load_input("lr", F32, Scalar);
    let b1 = b.load_input("beta1", F32, Scalar);
    let b2 = b.load_input("beta2", F32, Scalar);
    let eps = b.load_input("eps", F32, Scalar);
    let wd = b.load_input("weight_decay", F32, Scalar);
    let bc1 = b.load_input("bias_correction1", F32, Scalar);
    let bc2 = b.load_input("bias_correction2", F32, Scalar);
    let gs = b.load_input("grad_scale", F32, Scalar);
    let one = b.f32(1.0);
    let g = b.mul(g0, gs);
    let omb1 = b.sub(one, b1);
    let omb2 = b.sub(one, b2);
    let b1m = b.mul(b1, m);
    let m1 = b.fma(omb1, g, b1m);
    let b2v = b.mul(b2, v);
    let g2 = b.mul(g, g);
    let v1 = b.fma(omb2, g2, b2v);
    let mhat = b.mul(m1, bc1);
    let vhat = b.mul(v1, bc2);
    let sq = b.sqrt(vhat);
    let den = b.add(sq, eps);
    let ratio = b.div(mhat, den);
    let upd = b.fma(wd, p, ratio);
    let neg_lr = b.neg(lr);
    let p1 = b.fma(neg_lr, upd, p);
    b.output("param", OutputAccess::Full, p1);
    b.output("m", OutputAccess::Full, m1);
    b.output("v", OutputAccess::Full, v1);
    done(b)
}

fn dropout(name: &str, stream: u32) -> RowProgram {
    let mut b = RowBuilder::new(name);
    let x = b.load_input("x", F32, Full);
    let p = b.load_input("p", F32, Scalar);
    let seed = b.load_input("seed", I32, Scalar);
    let step = b.load_input("step", I32, Scalar);
    let one = b.f32(1.0);
    let zero = b.f32(0.0);
    let keep_p = b.sub(one, p);
    let scale = b.recip(keep_p);
    let u = b.rand_uniform(seed, step, stream);
    let keep = b.cmp(CmpOp::Ge, u, p);
    let xs = b.mul(x, scale);
    let y = b.select(keep, xs, zero);
    b.output("y", OutputAccess::Full, y);
    done(b)
}

/// Inverted dropout: keeps an element when its `rand_uniform(seed, step, stream) >= p` and scales
/// it by `1 / (1 - p)`. The backward is the same program applied to the output gradient with the
/// same seed, step and stream (the mask is recomputed, never stored).
pub fn dropout_fwd(stream: u32) -> RowProgram {
    dropout("dropout", stream)
}

/// All library programs with representative parameters (for tests and snapshots).
pub fn all() -> Vec<RowProgram> {
    vec![
        bias_gelu_tanh(),
        bias_gelu_erf(),
        gelu_erf_bwd(),
        swiglu_fwd(),
        swiglu_bwd(),
        residual_add(),
        layernorm_fwd(1e-5),
        layernorm_bwd(),
        rmsnorm_fwd(1e-6),
        rmsnorm_bwd(),
        softmax_causal(),
        softmax_bwd(),
        cross_entropy_fwd(),
        cross_entropy_bwd(),
        adamw(),
        dropout_fwd(0),
    ]
}

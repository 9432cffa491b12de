//! Layout: folds transposes into `MatMul`'s `transpose_a` / `transpose_b` flags, so a GEMM reads
//! the operand in its stored order instead of a transposed copy being materialised.
//!
//! Rewrites:
//! - `matmul(permute(x, swap last two), w)` → `matmul[transpose_a = !ta](x, w)`, and the same for
//!   the rhs: the tied output projection `h @ transpose(wte)` becomes `matmul[transpose_b](h, wte)`.
//! - More generally, an operand `permute(x, p)` whose `p` moves the innermost axis, where `p` with
//!   its last two entries swapped (`p'`) keeps the innermost axis in place, becomes
//!   `permute(x, p')` with the flag flipped: attention's `q @ transpose(split_heads(k))` reads `k`
//!   in the `[b, h, s, hd]` layout with `transpose_b`, and the leftover permute moves whole rows.
//! - `permute(matmul(a, b), swap last two)` → `matmul[transpose_a = !tb, transpose_b = !ta](b, a)`
//!   when the matmul has no other use and both operands have the same rank (`(AB)ᵀ = BᵀAᵀ`): the
//!   weight gradient of a tied embedding is produced in the table's layout directly. As for
//!   operands, a result permute `p` that moves the innermost axis becomes the swapped matmul
//!   followed by `p ∘ swap` when that keeps the innermost axis (attention's key gradient).
//!
//! A permute that also feeds other users stays for them (DCE removes it once it has none); the
//! matmul reads `x` either way. Every rewrite is checked with the op's type rule and skipped if the
//! type would change. Not done here: permutes through reshapes, and layouts of ops other than
//! `MatMul` (a planner's business, not a rewrite's).

use crate::ir::{infer, Graph, IrError, Op, TensorType, ValueId};

use super::{topo, PassResult, PassStats};

pub const NAME: &str = "layout";

pub fn run(g: &mut Graph) -> Result<PassResult, IrError> {
    let mut stats = PassStats::new();
    for v in topo(g)? {
        if !g.contains(v) {
            continue;
        }
        // Copy out the little each rule needs; cloning every op would copy every shape.
        let kind = match g.node(v).op() {
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => Kind::MatMul(*transpose_a, *transpose_b),
            Op::Permute { perm } => Kind::Permute(perm.clone()),
            _ => continue,
        };
        match kind {
            Kind::MatMul(transpose_a, transpose_b) => {
                let ins = g.node(v).inputs().to_vec();
                let (a, fa, ka) = fold_operand(g, ins[0], transpose_a);
                let (b, fb, kb) = fold_operand(g, ins[1], transpose_b);
                if !(fa || fb) {
                    continue;
                }
                let op = Op::MatMul {
                    transpose_a: ka,
                    transpose_b: kb,
                };
                // Materialise the leftover permutes only once the whole rewrite type-checks.
                let (Some(ta), Some(tb)) = (a.ty(g), b.ty(g)) else {
                    continue;
                };
                if !matches!(infer(&op, &[&ta, &tb]), Ok(t) if &t == g.ty(v)) {
                    continue;
                }
                let a = a.resolve(g);
                let b = b.resolve(g);
                let ty = g.ty(v).clone();
                g.set_op(v, op, ty);
                g.set_inputs(v, &[a, b]);
                if fa {
                    stats.bump("operand_a");
                }
                if fb {
                    stats.bump("operand_b");
                }
            }
            Kind::Permute(perm) => {
                let m = g.node(v).inputs()[0];
                let Op::MatMul {
                    transpose_a,
                    transpose_b,
                } = *g.node(m).op()
                else {
                    continue;
                };
                let (a, b) = (g.node(m).inputs()[0], g.node(m).inputs()[1]);
                if g.shape(a).len() != g.shape(b).len() || !sole_use(g, m, v) {
                    continue;
                }
                // permute(M, p) = permute(Mᵀ, p ∘ swap): `rest` is what is left after the
                // swapped matmul produces Mᵀ.
                let r = perm.len();
                let rest: Vec<usize> = perm.iter().map(|i| swap_last_two(*i, r)).collect();
                let rest_is_identity = rest.iter().enumerate().all(|(i, p)| i == *p);
                let moves_rows_only = perm[r - 1] != r - 1 && rest[r - 1] == r - 1;
                if !rest_is_identity && !moves_rows_only {
                    continue;
                }
                let op = Op::MatMul {
                    transpose_a: !transpose_b,
                    transpose_b: !transpose_a,
                };
                let tys = [g.ty(b), g.ty(a)];
                let Ok(mt) = infer(&op, &tys) else {
                    continue;
                };
                if rest_is_identity {
                    if &mt != g.ty(v) {
                        continue;
                    }
                    let ty = g.ty(v).clone();
                    g.set_op(v, op, ty);
                    g.set_inputs(v, &[b, a]);
                    g.remove(m);
                    stats.bump("transposed_result");
                } else {
                    let rest_op = Op::Permute { perm: rest };
                    if !matches!(infer(&rest_op, &[&mt]), Ok(t) if &t == g.ty(v)) {
                        continue;
                    }
                    let name = g.node(m).name().map(str::to_string);
                    let mt_v = g.add_unchecked(op, &[b, a], mt, name);
                    let ty = g.ty(v).clone();
                    g.set_op(v, rest_op, ty);
                    g.set_inputs(v, &[mt_v]);
                    g.remove(m);
                    stats.bump("transposed_result");
                }
            }
        }
    }
    Ok(PassResult::from_stats(stats))
}

enum Kind {
    MatMul(bool, bool),
    Permute(Vec<usize>),
}

/// A matmul operand after folding: an existing value, or a permute still to be added.
enum Operand {
    Value(ValueId),
    Permute {
        x: ValueId,
        perm: Vec<usize>,
        name: Option<String>,
    },
}

impl Operand {
    fn ty(&self, g: &Graph) -> Option<TensorType> {
        match self {
            Operand::Value(v) => Some(g.ty(*v).clone()),
            Operand::Permute { x, perm, .. } => {
                infer(&Op::Permute { perm: perm.clone() }, &[g.ty(*x)]).ok()
            }
        }
    }

    /// The operand's value, adding the leftover permute (whose type `ty` has checked).
    fn resolve(self, g: &mut Graph) -> ValueId {
        match self {
            Operand::Value(v) => v,
            Operand::Permute { x, perm, name } => {
                let op = Op::Permute { perm };
                match infer(&op, &[g.ty(x)]) {
                    Ok(ty) => g.add_unchecked(op, &[x], ty, name),
                    Err(_) => unreachable!("checked by Operand::ty before resolving"),
                }
            }
        }
    }
}

/// Folds a transposing permute feeding a matmul operand: `(operand, folded?, new flag)`.
fn fold_operand(g: &Graph, v: ValueId, flag: bool) -> (Operand, bool, bool) {
    let n = g.node(v);
    let Op::Permute { perm } = n.op() else {
        return (Operand::Value(v), false, flag);
    };
    let r = perm.len();
    if r < 2 {
        return (Operand::Value(v), false, flag);
    }
    let mut swapped = perm.clone();
    swapped.swap(r - 2, r - 1);
    let x = n.inputs()[0];
    if swapped.iter().enumerate().all(|(i, p)| i == *p) {
        return (Operand::Value(x), true, !flag);
    }
    // Worth it only when the permute moves the innermost axis and the leftover one does not.
    if perm[r - 1] != r - 1 && swapped[r - 1] == r - 1 {
        let name = n.name().map(str::to_string);
        return (
            Operand::Permute {
                x,
                perm: swapped,
                name,
            },
            true,
            !flag,
        );
    }
    (Operand::Value(v), false, flag)
}

/// The swap of the last two of `r` axes, applied to axis `i`.
fn swap_last_two(i: usize, r: usize) -> usize {
    if r >= 2 && i == r - 1 {
        r - 2
    } else if r >= 2 && i == r - 2 {
        r - 1
    } else {
        i
    }
}

/// `v` is `m`'s only user, and `m` is no output or state update.
fn sole_use(g: &Graph, m: ValueId, v: ValueId) -> bool {
    g.users(m) == [v]
        && !g.outputs().iter().any(|o| o.value == m)
        && !g.updates().iter().any(|u| u.value == m)
}

//! Vector math in Cranelift IR: `f32x4` constants, selects, and the transcendental functions
//! Cranelift lacks (exp, log, tanh, erf, sigmoid) as polynomial approximations.
//!
//! Calling libm per element from JIT code costs ~7 ns (CRATES.md), so every function here is
//! straight-line `f32x4` code: range reduction, a polynomial in Horner form with `fma`, and
//! clamps written as compare+`bitselect` in the exact shapes Cranelift's x64 backend lowers to
//! single `minps`/`maxps`/`blendvps` instructions (its NaN-correct `fmin`/`fmax` take ~7).
//! Coefficients are weighted-minimax fits in f64 (Lawson's algorithm), rounded to f32; the
//! accuracy each achieves against libm is asserted in `runtime/tests/jit_math.rs`:
//!
//! | function | method | bound (tested) |
//! |---|---|---|
//! | `exp` | `2^n · e^r`, `|r| ≤ ln2/2`, degree-7 poly (`1 + r + r²·P5(r)`), `2^n` from exponent bits in two factors | rel ≤ 1e-6 on normal results; exact 0 below -104, +inf above 88.73 |
//! | `log` | `e·ln2 + log1p(f)`, `f ∈ [√½-1, √2-1]`, `f - f²/2 + f³·P7(f)` | rel ≤ 1e-6, or abs ≤ 1e-7 near x = 1 |
//! | `tanh` | `|x| < 0.625`: `x + x·s·P4(s)`; else `1 - 2/(e^{2|x|}+1)` | rel ≤ 1e-6, or abs ≤ 1e-7 |
//! | `erf` | `|x| < 0.921875`: `x·P5(x²)`; else `1 - exp(R7(|x|) - x²)` | rel ≤ 1e-6, or abs ≤ 1e-7 |
//! | `sigmoid` | `1 / (1 + e^{-x})` | rel ≤ 1e-6 where the result is ≥ 1e-30 |

use cranelift_codegen::ir::{
    condcodes::FloatCC, types, ConstantData, Endianness, InstBuilder, MemFlagsData, Value,
};
use cranelift_frontend::FunctionBuilder;

/// What the target offers that changes the code we emit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    /// Hardware fused multiply-add (x86 FMA3). Without it `fma` becomes mul+add: Cranelift would
    /// otherwise call libm per lane.
    pub fma: bool,
}

fn le() -> MemFlagsData {
    MemFlagsData::new().with_endianness(Endianness::Little)
}

/// Splat `f32` constant.
pub(crate) fn fk(b: &mut FunctionBuilder<'_>, c: f32) -> Value {
    let mut bytes = Vec::with_capacity(16);
    for _ in 0..4 {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    let h = b.func.dfg.constants.insert(ConstantData::from(bytes));
    b.ins().vconst(types::F32X4, h)
}

/// `i32x4` constant with the given lanes.
pub(crate) fn ik4(b: &mut FunctionBuilder<'_>, lanes: [i32; 4]) -> Value {
    let mut bytes = Vec::with_capacity(16);
    for l in lanes {
        bytes.extend_from_slice(&l.to_le_bytes());
    }
    let h = b.func.dfg.constants.insert(ConstantData::from(bytes));
    b.ins().vconst(types::I32X4, h)
}

/// Splat `i32` constant.
pub(crate) fn ik(b: &mut FunctionBuilder<'_>, c: i32) -> Value {
    ik4(b, [c; 4])
}

pub(crate) fn as_f(b: &mut FunctionBuilder<'_>, v: Value) -> Value {
    b.ins().bitcast(types::F32X4, le(), v)
}

pub(crate) fn as_i(b: &mut FunctionBuilder<'_>, v: Value) -> Value {
    b.ins().bitcast(types::I32X4, le(), v)
}

/// `a * x + c`.
pub(crate) fn fmadd(b: &mut FunctionBuilder<'_>, t: Target, a: Value, x: Value, c: Value) -> Value {
    if t.fma {
        b.ins().fma(a, x, c)
    } else {
        let m = b.ins().fmul(a, x);
        b.ins().fadd(m, c)
    }
}

/// `mask ? a : c` on `f32x4`; `mask` is an `i32x4` of all-ones / all-zeros lanes.
pub(crate) fn fsel(b: &mut FunctionBuilder<'_>, mask: Value, a: Value, c: Value) -> Value {
    let m = as_f(b, mask);
    b.ins().bitselect(m, a, c)
}

/// `a < c ? a : c` (one `minps`; a NaN in either operand gives `c`).
pub(crate) fn fmin(b: &mut FunctionBuilder<'_>, a: Value, c: Value) -> Value {
    let m = b.ins().fcmp(FloatCC::LessThan, a, c);
    fsel(b, m, a, c)
}

/// `a > c ? a : c` (one `maxps`; a NaN in either operand gives `c`).
pub(crate) fn fmax(b: &mut FunctionBuilder<'_>, a: Value, c: Value) -> Value {
    let m = b.ins().fcmp(FloatCC::LessThan, c, a);
    fsel(b, m, a, c)
}

/// Horner evaluation, coefficients from the highest degree down.
fn poly(b: &mut FunctionBuilder<'_>, t: Target, x: Value, coeffs: &[f32]) -> Value {
    let mut acc = fk(b, coeffs[0]);
    for &c in &coeffs[1..] {
        let k = fk(b, c);
        acc = fmadd(b, t, acc, x, k);
    }
    acc
}

// exp: e^r = 1 + r + r^2 P(r) on |r| <= ln2/2 (max rel err of the fit 5.2e-11).
const EXP_P: [f32; 6] = [
    1.979_035_7e-4,
    1.394_465e-3,
    8.333_497e-3,
    4.166_629_5e-2,
    1.666_666_6e-1,
    5.000_000_1e-1,
];
// Cody-Waite split of ln 2: LN2_HI has 9 significant bits, so n * LN2_HI is exact for |n| < 2^15.
const LN2_HI: f32 = 0.693_359_375;
const LN2_LO: f32 = -2.121_944_4e-4;
// 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;
const ROUND_MAGIC_BITS: i32 = 0x4B40_0000;

/// `n = round(x / ln2)` and `r = x - n ln2`; returns `(r, n as i32x4)`.
fn exp_reduce(b: &mut FunctionBuilder<'_>, t: Target, x: Value) -> (Value, Value) {
    let log2e = fk(b, std::f32::consts::LOG2_E);
    let magic = fk(b, ROUND_MAGIC);
    let tt = fmadd(b, t, x, log2e, magic);
    let n = b.ins().fsub(tt, magic);
    let neg_hi = fk(b, -LN2_HI);
    let neg_lo = fk(b, -LN2_LO);
    let r = fmadd(b, t, n, neg_hi, x);
    let r = fmadd(b, t, n, neg_lo, r);
    let ti = as_i(b, tt);
    let mb = ik(b, ROUND_MAGIC_BITS);
    let ni = b.ins().isub(ti, mb);
    (r, ni)
}

/// `e^r` for the reduced argument.
fn exp_poly(b: &mut FunctionBuilder<'_>, t: Target, r: Value) -> Value {
    let p = poly(b, t, r, &EXP_P);
    let r2 = b.ins().fmul(r, r);
    let y = fmadd(b, t, p, r2, r);
    let one = fk(b, 1.0);
    b.ins().fadd(y, one)
}

/// `2^n` for `n` in the normal exponent range.
fn pow2(b: &mut FunctionBuilder<'_>, n: Value) -> Value {
    let bias = ik(b, 127);
    let e = b.ins().iadd(n, bias);
    let e = b.ins().ishl_imm_u(e, 23);
    as_f(b, e)
}

/// `e^x` clamped to `x ∈ [-87.3, 88.3]` (results between 1.2e-38 and 2.3e38): for callers whose
/// results saturate harmlessly outside that range (sigmoid, tanh, erf). NaN propagates.
pub(crate) fn exp_clamped(b: &mut FunctionBuilder<'_>, t: Target, x: Value) -> Value {
    let hi = fk(b, 88.3);
    let lo = fk(b, -87.3);
    let x = fmin(b, hi, x);
    let x = fmax(b, lo, x);
    let (r, n) = exp_reduce(b, t, x);
    let y = exp_poly(b, t, r);
    let s = pow2(b, n);
    b.ins().fmul(y, s)
}

/// `e^x` over the whole f32 range: gradual underflow to 0 below about -103.3, +inf above
/// 88.73, NaN propagates. `2^n` is applied as two factors so that `n ∈ [-150, 128]` works.
pub(crate) fn exp(b: &mut FunctionBuilder<'_>, t: Target, x: Value) -> Value {
    let hi = fk(b, 89.0);
    let lo = fk(b, -104.0);
    let x = fmin(b, hi, x);
    let x = fmax(b, lo, x);
    let (r, n) = exp_reduce(b, t, x);
    let y = exp_poly(b, t, r);
    let n1 = b.ins().sshr_imm_u(n, 1);
    let n2 = b.ins().isub(n, n1);
    let s1 = pow2(b, n1);
    let s2 = pow2(b, n2);
    let y = b.ins().fmul(y, s1);
    b.ins().fmul(y, s2)
}

/// `1 / (1 + e^-x)`.
pub(crate) fn sigmoid(b: &mut FunctionBuilder<'_>, t: Target, x: Value) -> Value {
    let nx = b.ins().fneg(x);
    let e = exp_clamped(b, t, nx);
    let one = fk(b, 1.0);
    let d = b.ins().fadd(one, e);
    b.ins().fdiv(one, d)
}

// tanh(x) = x + x s P(s), s = x^2, |x| <= 0.625 (max rel err of the fit 4.4e-9).
const TANH_P: [f32; 5] = [
    -5.704_978_5e-3,
    2.063_907_9e-2,
    -5.373_971e-2,
    1.333_144_2e-1,
    -3.333_328e-1,
];
const TANH_SMALL: f32 = 0.625;

/// Sign bit of `x` copied onto the non-negative `mag`.
fn with_sign_of(b: &mut FunctionBuilder<'_>, mag: Value, x: Value) -> Value {
    let xi = as_i(b, x);
    let sign = ik(b, i32::MIN);
    let s = b.ins().band(xi, sign);
    let mi = as_i(b, mag);
    let r = b.ins().bor(mi, s);
    as_f(b, r)
}

pub(crate) fn tanh(b: &mut FunctionBuilder<'_>, t: Target, x: Value) -> Value {
    let a = b.ins().fabs(x);
    let s = b.ins().fmul(x, x);
    let p = poly(b, t, s, &TANH_P);
    let xs = b.ins().fmul(x, s);
    let small = fmadd(b, t, xs, p, x);
    let two_a = b.ins().fadd(a, a);
    let e = exp_clamped(b, t, two_a);
    let one = fk(b, 1.0);
    let two = fk(b, 2.0);
    let d = b.ins().fadd(e, one);
    let q = b.ins().fdiv(two, d);
    let big = b.ins().fsub(one, q);
    let big = with_sign_of(b, big, x);
    let k = fk(b, TANH_SMALL);
    let is_small = b.ins().fcmp(FloatCC::LessThan, a, k);
    fsel(b, is_small, small, big)
}

// erf(x) = x P(x^2) for |x| < 0.921875 (max rel err of the fit 1.6e-8).
const ERF_SMALL_P: [f32; 6] = [
    -5.990_850_6e-4,
    4.993_179_3e-3,
    -2.676_661_5e-2,
    1.128_181_6e-1,
    -3.761_249_5e-1,
    1.128_379_1,
];
// erf(t) = 1 - exp(R(t) - t^2) for 0.921875 <= t <= 4 (weighted max err of the fit 4.5e-11).
const ERF_LARGE_R: [f32; 8] = [
    -2.111_858_9e-5,
    4.347_347e-4,
    -4.172_381_5e-3,
    2.512_289_8e-2,
    -1.082_854_6e-1,
    3.666_579_7e-1,
    -1.129_517_3,
    1.751_859_4e-4,
];
const ERF_SMALL: f32 = 0.921_875;

pub(crate) fn erf(b: &mut FunctionBuilder<'_>, t: Target, x: Value) -> Value {
    let a = b.ins().fabs(x);
    let s = b.ins().fmul(x, x);
    let p = poly(b, t, s, &ERF_SMALL_P);
    let small = b.ins().fmul(x, p);
    // Beyond 4, 1 - erf < 1.6e-8 rounds to 0 in f32. NaN stays NaN (`fmin` keeps `a`).
    let four = fk(b, 4.0);
    let ac = fmin(b, four, a);
    let r = poly(b, t, ac, &ERF_LARGE_R);
    let nac = b.ins().fneg(ac);
    let q = fmadd(b, t, nac, ac, r);
    let e = exp_clamped(b, t, q);
    let one = fk(b, 1.0);
    let big = b.ins().fsub(one, e);
    let big = with_sign_of(b, big, x);
    let k = fk(b, ERF_SMALL);
    let is_small = b.ins().fcmp(FloatCC::LessThan, a, k);
    fsel(b, is_small, small, big)
}

// log(1+f) = f - f^2/2 + f^3 P(f), f in [sqrt(1/2)-1, sqrt(2)-1] (max rel err of the fit 5.8e-9).
const LOG_P: [f32; 8] = [
    -7.634_43e-2,
    1.276_155e-1,
    -1.316_019_4e-1,
    1.420_176_2e-1,
    -1.662_335_7e-1,
    2.000_122_7e-1,
    -2.500_082_3e-1,
    3.333_333e-1,
];

/// Natural log with IEEE edge cases: `log(±0) = -inf`, `log(x<0) = NaN`, `log(inf) = inf`,
/// NaN propagates, subnormal inputs are exact (scaled by 2^23 first).
pub(crate) fn log(b: &mut FunctionBuilder<'_>, t: Target, x: Value) -> Value {
    let min_normal = fk(b, f32::MIN_POSITIVE);
    let is_sub = b.ins().fcmp(FloatCC::LessThan, x, min_normal);
    let two23 = fk(b, 8_388_608.0);
    let xs = b.ins().fmul(x, two23);
    let xs = fsel(b, is_sub, xs, x);
    let m23 = ik(b, -23);
    let zero_i = ik(b, 0);
    let eadj = b.ins().bitselect(is_sub, m23, zero_i);

    let bits = as_i(b, xs);
    let e = b.ins().sshr_imm_u(bits, 23);
    let bias = ik(b, 127);
    let e = b.ins().isub(e, bias);
    let e = b.ins().iadd(e, eadj);
    let mant_mask = ik(b, 0x007F_FFFF);
    let one_bits = ik(b, 0x3F80_0000);
    let m = b.ins().band(bits, mant_mask);
    let m = b.ins().bor(m, one_bits);
    let m = as_f(b, m);
    let sqrt2 = fk(b, std::f32::consts::SQRT_2);
    let big = b.ins().fcmp(FloatCC::GreaterThan, m, sqrt2);
    let half = fk(b, 0.5);
    let mh = b.ins().fmul(m, half);
    let m = fsel(b, big, mh, m);
    // A true mask lane is -1: subtracting it increments the exponent.
    let e = b.ins().isub(e, big);
    let one = fk(b, 1.0);
    let f = b.ins().fsub(m, one);
    let ef = b.ins().fcvt_from_sint(types::F32X4, e);

    let z = b.ins().fmul(f, f);
    let p = poly(b, t, f, &LOG_P);
    let fz = b.ins().fmul(f, z);
    let y = b.ins().fmul(fz, p);
    let lo = fk(b, LN2_LO);
    let y = fmadd(b, t, ef, lo, y);
    let mhalf = fk(b, -0.5);
    let y = fmadd(b, t, z, mhalf, y);
    let r = b.ins().fadd(f, y);
    let hi = fk(b, LN2_HI);
    let r = fmadd(b, t, ef, hi, r);

    let inf = fk(b, f32::INFINITY);
    let is_inf = b.ins().fcmp(FloatCC::Equal, x, inf);
    let r = fsel(b, is_inf, inf, r);
    let zero = fk(b, 0.0);
    let is_zero = b.ins().fcmp(FloatCC::Equal, x, zero);
    let ninf = fk(b, f32::NEG_INFINITY);
    let r = fsel(b, is_zero, ninf, r);
    let nonneg = b.ins().fcmp(FloatCC::GreaterThanOrEqual, x, zero);
    let nan = fk(b, f32::NAN);
    // Negative or NaN input: NaN.
    fsel(b, nonneg, r, nan)
}

/// `1 / x`.
pub(crate) fn recip(b: &mut FunctionBuilder<'_>, x: Value) -> Value {
    let one = fk(b, 1.0);
    b.ins().fdiv(one, x)
}

/// `1 / sqrt(x)`.
pub(crate) fn rsqrt(b: &mut FunctionBuilder<'_>, x: Value) -> Value {
    let s = b.ins().sqrt(x);
    recip(b, s)
}

/// The `lowbias32` mixer of `kiln_compiler::kernel::rng::mix32`, on `i32x4`.
pub(crate) fn mix32(b: &mut FunctionBuilder<'_>, x: Value) -> Value {
    let s = b.ins().ushr_imm_u(x, 16);
    let x = b.ins().bxor(x, s);
    let k1 = ik(b, 0x7feb_352d);
    let x = b.ins().imul(x, k1);
    let s = b.ins().ushr_imm_u(x, 15);
    let x = b.ins().bxor(x, s);
    let k2 = ik(b, 0x846c_a68b_u32 as i32);
    let x = b.ins().imul(x, k2);
    let s = b.ins().ushr_imm_u(x, 16);
    b.ins().bxor(x, s)
}

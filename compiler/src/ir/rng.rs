//! The counter-based random numbers behind `RandUniform` and parameter init, shared by the
//! interpreter and every runtime so that dropout masks and initial weights are bit-identical
//! across backends.
//!
//! Definition (normative; runtimes must reproduce it exactly):
//! - `mix64` is the SplitMix64 finalizer.
//! - `stream_key(seed, step, stream) = mix64(mix64(mix64(seed ^ K0) ^ step) ^ stream)`.
//! - `rand_bits(key, i) = mix64(key + (i + 1) * GAMMA)` (wrapping u64 arithmetic), i.e. the i-th
//!   output of a SplitMix64 generator seeded with `key`, computable at any `i` independently.
//! - `uniform_f32(key, i) = (rand_bits(key, i) >> 40) as f32 * 2^-24`: 24 random bits, exactly
//!   representable, in [0, 1).
//! - `i` is the row-major flat index of the element in the bound output shape.
//!
//! Parameter init (`init_element`) uses `key = stream_key(seed, 0, fnv1a(param name))`; `Normal`
//! is Box-Muller on `u1 = uniform_f64(key, 2i)`, `u2 = uniform_f64(key, 2i + 1)`:
//! `std * sqrt(-2 ln(1 - u1)) * cos(2π u2)`; `Uniform` is `low + (high - low) * uniform_f64(key, i)`.

use super::ops::Init;

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
const K0: u64 = 0x6A09_E667_F3BC_C909;

/// The SplitMix64 finalizer: a bijection on u64 with full avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of one `RandUniform` op in one training step.
pub fn stream_key(seed: u64, step: u64, stream: u64) -> u64 {
    mix64(mix64(mix64(seed ^ K0) ^ step) ^ stream)
}

/// 64 random bits for element `index` of the stream `key`.
pub fn rand_bits(key: u64, index: u64) -> u64 {
    mix64(key.wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// Uniform in [0, 1) with 24 random bits.
pub fn uniform_f32(key: u64, index: u64) -> f32 {
    (rand_bits(key, index) >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// Uniform in [0, 1) with 53 random bits (used for parameter init).
pub fn uniform_f64(key: u64, index: u64) -> f64 {
    (rand_bits(key, index) >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
}

/// FNV-1a of a name: the stream number of a parameter's init (`stream_key(seed, 0, fnv1a(name))`).
pub fn fnv1a(name: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The key of a parameter's init.
pub fn param_key(seed: u64, name: &str) -> u64 {
    stream_key(seed, 0, fnv1a(name))
}

/// Element `index` of a parameter initialised with `init` (in f64; round to the param's dtype).
pub fn init_element(init: &Init, key: u64, index: u64) -> f64 {
    match init {
        Init::Normal { std } => {
            let u1 = uniform_f64(key, 2 * index);
            let u2 = uniform_f64(key, 2 * index + 1);
            std * (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        }
        Init::Zeros => 0.0,
        Init::Ones => 1.0,
        Init::Uniform { low, high } => low + (high - low) * uniform_f64(key, index),
        Init::Const(v) => *v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_and_roughly_uniform() {
        let key = stream_key(1, 2, 3);
        let n = 20_000;
        let mut sum = 0.0f64;
        for i in 0..n {
            let u = uniform_f32(key, i);
            assert!((0.0..1.0).contains(&u));
            sum += f64::from(u);
        }
        let mean = sum / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert_ne!(stream_key(1, 2, 3), stream_key(1, 3, 3));
        assert_ne!(stream_key(1, 2, 3), stream_key(2, 2, 3));
    }

    #[test]
    fn pinned_values() {
        // Pinned so that a change to the definition (which runtimes must mirror) fails loudly.
        assert_eq!(mix64(0), 0);
        assert_eq!(rand_bits(0, 0), 0xE220_A839_7B1D_CDAF);
    }
}

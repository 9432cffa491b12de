//! The counter-based random numbers of `rand_uniform` (dropout masks), defined once, bit-exactly.
//!
//! A uniform number is a pure function of `(seed, step, stream, index)`, so any backend, thread
//! split or recomputation (dropout's backward pass regenerates the forward mask) gets the same bits
//! with no RNG state to store or advance. The mixer is `lowbias32` (Chris Wellons' hash-prospector:
//! xor-shift, multiply, xor-shift, multiply, xor-shift; a bijection on `u32` with low avalanche
//! bias). Only 32-bit integer multiply, xor and logical shift are used, which every target has in
//! its vector units.
//!
//! Definition (all arithmetic wrapping on `u32`):
//! ```text
//! key     = mix32(mix32(mix32(seed ^ 0x9e3779b9) ^ step) ^ (stream * 0x85ebca6b))
//! bits    = mix32(mix32(index ^ key) + key)
//! uniform = (bits >> 8) as f32 * 2^-24          // exactly representable, in [0, 1)
//! ```
//! where `index = r * cols + c` (mod 2^32) is the element's flat position in the launch.

/// `lowbias32`: a 32-bit integer mixer.
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The per-launch key of one random stream (computed once per kernel or row by backends).
pub fn rand_key(seed: u32, step: u32, stream: u32) -> u32 {
    let k = mix32(seed ^ 0x9e37_79b9);
    let k = mix32(k ^ step);
    mix32(k ^ stream.wrapping_mul(0x85eb_ca6b))
}

/// The 32 random bits of element `index` under `key`.
pub fn rand_bits(key: u32, index: u32) -> u32 {
    mix32(mix32(index ^ key).wrapping_add(key))
}

/// The top 24 bits as a float in `[0, 1)`.
pub fn bits_to_uniform(bits: u32) -> f32 {
    (bits >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// The uniform number of `rand_uniform` at flat element `index`.
pub fn rand_uniform(seed: u32, step: u32, stream: u32, index: u32) -> f32 {
    bits_to_uniform(rand_bits(rand_key(seed, step, stream), index))
}

/// The flat index of element `(r, c)` as `rand_uniform` sees it.
pub fn flat_index(r: usize, c: usize, cols: usize) -> u32 {
    (r as u64).wrapping_mul(cols as u64).wrapping_add(c as u64) as u32
}

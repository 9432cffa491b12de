//! Every CUDA source this backend generates for the shapes we ship: the kernel IR's library
//! programs (all-f32 and mixed-precision layouts), the attention variants of the tiny and
//! character-level configs of every spec in `specs/`, and the data module. CI compiles all of
//! them with NVRTC for sm_90 (`runtime/tests/cuda_nvrtc.rs`), and the snapshots show them.
//!
//! The attention table is written by hand from the specs' configs (head dimension, mask, bias),
//! because the compiler does not yet emit kernel graphs for specs; when it does, this table
//! should be replaced by the kernels of each tiny spec's compiled program.

use kiln_compiler::kernel::{
    library, AttentionKernel, AttentionMask, Direction, OutputAccess, RowProgram,
};

use super::attention::{self, Variant};
use super::codegen::{self, RowLayout};
use super::nvrtc::Source;
use super::{data, CudaError, Storage};

/// AdamW that also writes a bf16 copy of the updated parameter (mixed precision: the f32 master
/// weight and the bf16 weight the next forward reads come out of one pass over the parameters).
/// Outputs: `param` (f32), `m`, `v`, `param_bf16` (stored bf16 by [`adamw_mixed_layout`]).
pub fn adamw_mixed() -> RowProgram {
    let mut p = library::adamw();
    p.name = "adamw_mixed".into();
    let param = p.outputs[0].value;
    p.outputs.push(kiln_compiler::kernel::OutputDecl {
        name: "param_bf16".into(),
        access: OutputAccess::Full,
        value: param,
    });
    p
}

/// Layout of [`adamw_mixed`]: everything f32 but the bf16 weight copy.
pub fn adamw_mixed_layout() -> RowLayout {
    let p = adamw_mixed();
    let mut layout = RowLayout::f32(&p);
    if let Some(last) = layout.outputs.last_mut() {
        *last = Storage::Bf16;
    }
    layout
}

/// Every (program, layout) pair the backend generates for the library.
pub fn row_kernels() -> Vec<(RowProgram, RowLayout)> {
    let mut out = vec![];
    for p in library::all() {
        out.push((p.clone(), RowLayout::f32(&p)));
        let mixed = RowLayout::bf16_activations(&p);
        // Optimizer updates keep f32 state: no bf16 variant of AdamW's own buffers.
        if mixed != RowLayout::f32(&p) && p.name != "adamw" {
            out.push((p, mixed));
        }
    }
    out.push((adamw_mixed(), adamw_mixed_layout()));
    out
}

/// One attention call of a shipped config.
#[derive(Clone, Debug)]
pub struct SpecAttention {
    pub config: &'static str,
    /// Which attention of the model (`self`, `cross`, ...).
    pub role: &'static str,
    pub kernel: AttentionKernel,
}

// One row of the table below: positional arguments read like the table's columns.
#[allow(clippy::too_many_arguments)]
fn attn(
    config: &'static str,
    role: &'static str,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    kv_len: usize,
    head_dim: usize,
    mask: AttentionMask,
    has_bias: bool,
) -> SpecAttention {
    SpecAttention {
        config,
        role,
        kernel: AttentionKernel {
            direction: Direction::Forward,
            batch: 2,
            heads,
            kv_heads,
            q_len: seq,
            kv_len,
            head_dim,
            scale: if has_bias {
                1.0 // T5 does not scale scores.
            } else {
                1.0 / (head_dim as f32).sqrt()
            },
            mask,
            has_bias,
            key_padding: false,
            layout: kiln_compiler::kernel::AttentionLayout::HEAD_MAJOR,
        },
    }
}

/// The attention calls of the tiny and character-level configs in `specs/` (forward; the
/// backward has the same shapes).
pub fn spec_attention() -> Vec<SpecAttention> {
    use AttentionMask::{Causal, Full, Local, PrefixLm};
    vec![
        attn("gpt2_tiny", "self", 4, 4, 32, 32, 8, Causal, false),
        attn("gpt2_char", "self", 4, 4, 64, 64, 32, Causal, false),
        attn("gpt2_char_large", "self", 6, 6, 256, 256, 64, Causal, false),
        attn("gpt3_tiny", "dense", 4, 4, 32, 32, 8, Causal, false),
        attn(
            "gpt3_tiny",
            "banded",
            4,
            4,
            32,
            32,
            8,
            Local { window: 8 },
            false,
        ),
        attn(
            "gpt3_char",
            "banded",
            4,
            4,
            128,
            128,
            32,
            Local { window: 32 },
            false,
        ),
        attn("llama_tiny", "self", 4, 2, 32, 32, 8, Causal, false),
        attn("llama_char", "self", 4, 4, 128, 128, 32, Causal, false),
        attn("palm_tiny", "self", 4, 1, 32, 32, 8, Causal, false),
        attn("palm_char", "self", 4, 1, 128, 128, 32, Causal, false),
        attn("t5_tiny", "encoder", 4, 4, 32, 32, 8, Full, true),
        attn("t5_tiny", "decoder", 4, 4, 16, 16, 8, Causal, true),
        attn("t5_tiny", "cross", 4, 4, 16, 32, 8, Full, false),
        attn("t5_char", "encoder", 4, 4, 64, 64, 32, Full, true),
        attn("t5_char", "decoder", 4, 4, 32, 32, 32, Causal, true),
        attn("t5_char", "cross", 4, 4, 32, 64, 32, Full, false),
        attn(
            "gpt2_tiny(prefix_lm)",
            "self",
            4,
            4,
            32,
            32,
            8,
            PrefixLm { prefix: 12 },
            false,
        ),
    ]
}

/// The distinct attention variants of [`spec_attention`], forward and backward, in both
/// storages, in a stable order.
pub fn attention_variants() -> Vec<Variant> {
    let mut out: Vec<Variant> = vec![];
    for a in spec_attention() {
        for direction in [Direction::Forward, Direction::Backward] {
            for storage in [Storage::F32, Storage::Bf16] {
                let mut k = a.kernel;
                k.direction = direction;
                let v = Variant::of(&k, storage);
                if !out.contains(&v) {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// Every source: row kernels, attention modules, the data module.
pub fn all_sources() -> Result<Vec<Source>, CudaError> {
    let mut out = vec![];
    for (p, layout) in row_kernels() {
        let mut k = codegen::generate(&p, &layout)?;
        if layout != RowLayout::f32(&p) {
            k.source.name = format!("{}_mixed", k.source.name);
        }
        out.push(k.source);
    }
    for v in attention_variants() {
        out.push(attention::source(&v)?);
    }
    out.push(data::source());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_consistent() {
        let sources = all_sources().unwrap();
        let mut names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n, "source names must be unique");
        // Every library program is there in f32.
        for p in library::all() {
            let entry = format!("kiln_row_{}", codegen::c_ident(&p.name));
            assert!(names.contains(&entry.as_str()), "{entry} missing");
        }
        // Every spec attention call has its forward and backward module.
        for a in spec_attention() {
            attention::check(&a.kernel).unwrap();
            for d in [Direction::Forward, Direction::Backward] {
                let mut k = a.kernel;
                k.direction = d;
                let name = Variant::of(&k, Storage::F32).name();
                assert!(names.contains(&name.as_str()), "{name} missing");
            }
        }
        let p = adamw_mixed();
        kiln_compiler::kernel::validate(&p).unwrap();
        assert_eq!(adamw_mixed_layout().outputs.len(), p.outputs.len());
    }
}

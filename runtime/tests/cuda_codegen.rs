//! Snapshots of the CUDA sources the backend generates (no GPU, no NVRTC needed): every library
//! row program in its all-f32 and mixed-precision layouts, the attention modules of two
//! representative variants, and the data module. A change to the code generator shows up here
//! as a reviewable diff of CUDA C. Whether the sources compile is `cuda_nvrtc.rs`'s job.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};

use kiln_compiler::kernel::{AttentionKernel, AttentionMask, Direction};
use kiln_runtime::cuda::attention::{self, Variant};
use kiln_runtime::cuda::codegen::{self, RowLayout};
use kiln_runtime::cuda::{catalog, data, Storage};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(root().join("snapshots/cuda"));
    s.set_prepend_module_to_snapshot(false);
    s.set_omit_expression(true);
    s
}

#[test]
fn row_kernels() {
    let kernels = catalog::row_kernels();
    assert!(kernels.len() >= 20, "{} row kernels", kernels.len());
    settings().bind(|| {
        for (prog, layout) in kernels {
            let k = codegen::generate(&prog, &layout).expect("library programs generate");
            let suffix = if layout == RowLayout::f32(&prog) {
                "f32"
            } else {
                "mixed"
            };
            insta::assert_snapshot!(format!("row_{}_{suffix}", prog.name), k.source.code);
        }
    });
}

#[test]
fn attention_modules() {
    let k = |direction, mask, has_bias| AttentionKernel {
        direction,
        batch: 1,
        heads: 4,
        kv_heads: 4,
        q_len: 64,
        kv_len: 64,
        head_dim: 64,
        scale: 0.125,
        mask,
        has_bias,
        key_padding: false,
        layout: kiln_compiler::kernel::AttentionLayout::HEAD_MAJOR,
    };
    settings().bind(|| {
        for (kernel, storage) in [
            (
                k(Direction::Forward, AttentionMask::Causal, false),
                Storage::Bf16,
            ),
            (
                k(Direction::Backward, AttentionMask::Causal, false),
                Storage::Bf16,
            ),
            (
                k(Direction::Forward, AttentionMask::Full, true),
                Storage::F32,
            ),
            (
                k(Direction::Backward, AttentionMask::Full, true),
                Storage::F32,
            ),
        ] {
            let v = Variant::of(&kernel, storage);
            let src = attention::source(&v).unwrap();
            insta::assert_snapshot!(v.name(), src.code);
        }
    });
}

#[test]
fn data_module() {
    settings().bind(|| {
        insta::assert_snapshot!("data", data::source().code);
    });
}

#[test]
fn generation_is_deterministic() {
    let a = catalog::all_sources().unwrap();
    let b = catalog::all_sources().unwrap();
    assert_eq!(a, b);
}

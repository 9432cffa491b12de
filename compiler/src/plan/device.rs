//! Device models for the step-time and memory estimates: peak FLOP/s, memory capacity and
//! bandwidth, and link bandwidths.
//!
//! The estimate is a roofline per op (`max(flops / (peak · gemm_efficiency), bytes / memory
//! bandwidth)`) plus communication time at the link bandwidth, so the numbers here are the whole
//! model. Peaks are the vendors' dense figures (no sparsity); `gemm_efficiency` is the fraction of
//! peak that large matrix multiplications reach in practice. The `cpu` preset is this project's
//! reference machine, whose peak is the measured 2-thread SGEMM rate, so its efficiency is 1.

use crate::ir::DType;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Device {
    pub name: &'static str,
    pub description: &'static str,
    /// Memory capacity in bytes.
    pub memory_bytes: u64,
    /// Dense FLOP/s for f32 operands.
    pub peak_flops_f32: f64,
    /// Dense FLOP/s for bf16/f16 operands (f32 accumulation).
    pub peak_flops_16: f64,
    /// Memory bandwidth, bytes/s.
    pub memory_bandwidth: f64,
    /// Per-device bandwidth to the devices of its node (one direction), bytes/s: the tensor group.
    pub intra_node_bandwidth: f64,
    /// Per-device network bandwidth across nodes (one direction), bytes/s: data and pipeline groups.
    pub inter_node_bandwidth: f64,
    pub devices_per_node: u64,
    pub gemm_efficiency: f64,
}

const GIB: u64 = 1 << 30;

/// The presets `--device` accepts.
pub fn presets() -> Vec<Device> {
    vec![
        Device {
            name: "cpu",
            description: "this project's machine: 2-core AMD Zen 3 (EPYC), 24 GiB; peak = measured 2-thread SGEMM",
            memory_bytes: 24 * GIB,
            peak_flops_f32: 140e9,
            // No 16-bit FMA units: 16-bit operands are converted and computed in f32.
            peak_flops_16: 140e9,
            memory_bandwidth: 20e9,
            intra_node_bandwidth: 10e9,
            inter_node_bandwidth: 1.25e9,
            devices_per_node: 1,
            gemm_efficiency: 1.0,
        },
        Device {
            name: "a100-80gb",
            description: "NVIDIA A100 SXM 80GB: 312 TFLOP/s bf16, 19.5 f32, 2.0 TB/s HBM2e, NVLink 3 (300 GB/s each way), 200 Gb/s InfiniBand per GPU",
            memory_bytes: 80 * GIB,
            peak_flops_f32: 19.5e12,
            peak_flops_16: 312e12,
            memory_bandwidth: 2.039e12,
            intra_node_bandwidth: 300e9,
            inter_node_bandwidth: 25e9,
            devices_per_node: 8,
            gemm_efficiency: 0.8,
        },
        Device {
            name: "h100-80gb",
            description: "NVIDIA H100 SXM 80GB: 989 TFLOP/s bf16, 67 f32, 3.35 TB/s HBM3, NVLink 4 (450 GB/s each way), 400 Gb/s InfiniBand per GPU",
            memory_bytes: 80 * GIB,
            peak_flops_f32: 67e12,
            peak_flops_16: 989.4e12,
            memory_bandwidth: 3.35e12,
            intra_node_bandwidth: 450e9,
            inter_node_bandwidth: 50e9,
            devices_per_node: 8,
            gemm_efficiency: 0.7,
        },
        Device {
            name: "tpu-v4",
            description: "Google TPU v4 chip: 275 TFLOP/s bf16, 32 GiB HBM2 at 1.2 TB/s, ICI ~270 GB/s per chip; a 3072-chip pod (PaLM's) is one ICI domain",
            memory_bytes: 32 * GIB,
            peak_flops_f32: 275e12 / 4.0,
            peak_flops_16: 275e12,
            memory_bandwidth: 1.2e12,
            intra_node_bandwidth: 270e9,
            inter_node_bandwidth: 25e9,
            devices_per_node: 3072,
            gemm_efficiency: 0.8,
        },
    ]
}

pub fn preset(name: &str) -> Option<Device> {
    presets().into_iter().find(|d| d.name == name)
}

pub fn preset_names() -> Vec<&'static str> {
    presets().iter().map(|d| d.name).collect()
}

impl Device {
    /// Peak FLOP/s for operands of `dtype`.
    pub fn peak_flops(&self, dtype: DType) -> f64 {
        match dtype {
            DType::BF16 | DType::F16 => self.peak_flops_16,
            DType::F32 | DType::F64 | DType::I32 | DType::I64 | DType::Bool => self.peak_flops_f32,
        }
    }
}

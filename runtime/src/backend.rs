//! The contract between the run loops (train, eval, generate) and whatever executes a compiled
//! step: the reference interpreter (`InterpBackend`, slow and obviously right) or the fused CPU
//! program (`cpu::CpuBackend`, fast). The loops never know which one they drive, so every backend
//! can be checked against the interpreter by running the same loop.
//!
//! A backend owns the persistent state of a program — parameters and optimizer state, by name —
//! and runs one step at a time on named inputs.

use std::collections::BTreeMap;

use crate::checkpoint::HostTensor;

/// A named run input: token ids (`tokens`, `inputs`, `targets`, ...) or f32 scalars/tensors
/// (`lr`, `step`).
#[derive(Clone, Debug, PartialEq)]
pub enum InputTensor {
    I32 { shape: Vec<usize>, data: Vec<i32> },
    F32 { shape: Vec<usize>, data: Vec<f32> },
}

impl InputTensor {
    pub fn scalar(x: f32) -> Self {
        InputTensor::F32 {
            shape: vec![],
            data: vec![x],
        }
    }
    pub fn shape(&self) -> &[usize] {
        match self {
            InputTensor::I32 { shape, .. } | InputTensor::F32 { shape, .. } => shape,
        }
    }
}

/// Per-step randomness: dropout draws from (seed, step, stream, index).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepRng {
    pub seed: u64,
    pub step: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("input `{name}`: expected shape {expected:?}, got {got:?}")]
    InputShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("unknown state tensor `{0}`")]
    UnknownState(String),
    #[error("state `{name}`: expected shape {expected:?}, got {got:?}")]
    StateShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{0}")]
    Exec(String),
}

pub trait Backend {
    /// Every persistent tensor (parameters, then optimizer state), by name, with its shape.
    fn state_shapes(&self) -> Vec<(String, Vec<usize>)>;
    /// The current value of a persistent tensor.
    fn get_state(&self, name: &str) -> Result<HostTensor, BackendError>;
    /// Overwrite a persistent tensor (checkpoint load, parameter init).
    fn set_state(&mut self, name: &str, value: &HostTensor) -> Result<(), BackendError>;
    /// Inputs the program expects, with their shapes.
    fn input_shapes(&self) -> Vec<(String, Vec<usize>)>;
    /// Run one step: returns the program's named outputs (`loss`, `grad_norm`, `logits`, ...); state
    /// updates (parameters, optimizer state) are applied in place.
    fn run(
        &mut self,
        inputs: &BTreeMap<String, InputTensor>,
        rng: StepRng,
    ) -> Result<BTreeMap<String, HostTensor>, BackendError>;
    /// Start (or stop) timing each kernel launch, for [`Backend::profile_report`]. Executors
    /// without kernels ignore it.
    fn set_profiling(&mut self, _on: bool) {}
    /// Where a step's time went since profiling started (per kernel kind, slowest kernels), if
    /// the executor can tell.
    fn profile_report(&self) -> Option<String> {
        None
    }
}

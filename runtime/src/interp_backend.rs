//! A [`Backend`] over the reference interpreter (`kiln_compiler::interp`), in f32
//! (`Precision::Declared`: every float result rounded to its declared dtype after each op).
//!
//! It exists so that the run loops (train, eval, generate) work end to end before the fast CPU
//! executor does, and afterwards as the oracle the fast executor is compared against by running
//! the same loop. It is slow (plain loops in f64, one allocation per op): fine for the tiny
//! models of tests, far too slow for real runs.
//!
//! State is held as interpreter tensors whose values are exactly f32-representable, so a
//! round trip through [`HostTensor`] (checkpoints) is lossless and a resumed run is bitwise
//! identical to an uninterrupted one.

use std::collections::{BTreeMap, HashMap};

use kiln_compiler::interp::{self, Precision, RunOptions, Tensor};
use kiln_compiler::ir::{Bindings, DType, Graph, Op};

use crate::backend::{Backend, BackendError, InputTensor, StepRng};
use crate::checkpoint::HostTensor;

/// One declared program input.
#[derive(Debug, Clone)]
struct InputSpec {
    name: String,
    shape: Vec<usize>,
    dtype: DType,
}

/// The interpreter as an executor of one bound program.
pub struct InterpBackend {
    graph: Graph,
    bindings: Bindings,
    state: HashMap<String, Tensor>,
    /// Parameters (trainable, in graph order), then optimizer state (in graph order).
    state_order: Vec<(String, Vec<usize>, DType)>,
    inputs: Vec<InputSpec>,
}

impl std::fmt::Debug for InterpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterpBackend")
            .field("state", &self.state_order.len())
            .field("inputs", &self.inputs.len())
            .finish()
    }
}

fn exec(e: impl std::fmt::Display) -> BackendError {
    BackendError::Exec(e.to_string())
}

impl InterpBackend {
    /// Binds `graph`'s symbolic dims with `bindings` and initialises every persistent tensor as
    /// `interp::init_params` does for `seed` (the definition every backend shares).
    pub fn new(
        graph: &Graph,
        bindings: &Bindings,
        seed: u64,
    ) -> Result<InterpBackend, BackendError> {
        let bound = graph.bind(bindings).map_err(exec)?;
        let state = interp::init_params(&bound, bindings, seed).map_err(exec)?;
        let mut trainable = Vec::new();
        let mut frozen = Vec::new();
        let mut inputs = Vec::new();
        for v in bound.values() {
            let node = bound.node(v);
            match node.op() {
                Op::Param {
                    name,
                    dtype,
                    trainable: t,
                    ..
                } => {
                    let shape = state
                        .get(name)
                        .map(|t| t.shape.clone())
                        .ok_or_else(|| BackendError::UnknownState(name.clone()))?;
                    let entry = (name.clone(), shape, *dtype);
                    if *t {
                        trainable.push(entry);
                    } else {
                        frozen.push(entry);
                    }
                }
                Op::Input { name, dtype, .. } => {
                    let shape =
                        kiln_compiler::ir::bind_shape(node.shape(), bindings).map_err(exec)?;
                    inputs.push(InputSpec {
                        name: name.clone(),
                        shape,
                        dtype: *dtype,
                    });
                }
                _ => {}
            }
        }
        trainable.extend(frozen);
        Ok(InterpBackend {
            graph: bound,
            bindings: bindings.clone(),
            state,
            state_order: trainable,
            inputs,
        })
    }

    fn to_interp(&self, spec: &InputSpec, value: &InputTensor) -> Result<Tensor, BackendError> {
        if value.shape() != spec.shape.as_slice() {
            return Err(BackendError::InputShape {
                name: spec.name.clone(),
                expected: spec.shape.clone(),
                got: value.shape().to_vec(),
            });
        }
        let numel: usize = spec.shape.iter().product();
        let mismatch = |kind: &str| {
            BackendError::Exec(format!(
                "input `{}` is declared {} but was given {kind}",
                spec.name,
                spec.dtype.name()
            ))
        };
        match value {
            InputTensor::I32 { data, .. } => {
                if !spec.dtype.is_int() {
                    return Err(mismatch("integers"));
                }
                if data.len() != numel {
                    return Err(exec(format!(
                        "input `{}` has {} values for shape {:?}",
                        spec.name,
                        data.len(),
                        spec.shape
                    )));
                }
                Ok(Tensor::int(
                    spec.dtype,
                    spec.shape.clone(),
                    data.iter().map(|&x| i64::from(x)).collect(),
                ))
            }
            InputTensor::F32 { data, .. } => {
                if !spec.dtype.is_float() {
                    return Err(mismatch("floats"));
                }
                if data.len() != numel {
                    return Err(exec(format!(
                        "input `{}` has {} values for shape {:?}",
                        spec.name,
                        data.len(),
                        spec.shape
                    )));
                }
                Ok(Tensor::float(
                    spec.dtype,
                    spec.shape.clone(),
                    data.iter().map(|&x| f64::from(x)).collect(),
                ))
            }
        }
    }
}

fn host(t: &Tensor) -> HostTensor {
    HostTensor {
        shape: t.shape.clone(),
        data: t.to_f32_vec(),
    }
}

impl Backend for InterpBackend {
    fn state_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.state_order
            .iter()
            .map(|(n, s, _)| (n.clone(), s.clone()))
            .collect()
    }

    fn get_state(&self, name: &str) -> Result<HostTensor, BackendError> {
        self.state
            .get(name)
            .map(host)
            .ok_or_else(|| BackendError::UnknownState(name.to_string()))
    }

    fn set_state(&mut self, name: &str, value: &HostTensor) -> Result<(), BackendError> {
        let Some((_, shape, dtype)) = self.state_order.iter().find(|(n, _, _)| n == name) else {
            return Err(BackendError::UnknownState(name.to_string()));
        };
        if value.shape != *shape || value.data.len() != shape.iter().product::<usize>() {
            return Err(BackendError::StateShape {
                name: name.to_string(),
                expected: shape.clone(),
                got: value.shape.clone(),
            });
        }
        let t = Tensor::float(
            *dtype,
            shape.clone(),
            value.data.iter().map(|&x| f64::from(x)).collect(),
        );
        self.state.insert(name.to_string(), t);
        Ok(())
    }

    fn input_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.inputs
            .iter()
            .map(|i| (i.name.clone(), i.shape.clone()))
            .collect()
    }

    fn run(
        &mut self,
        inputs: &BTreeMap<String, InputTensor>,
        rng: StepRng,
    ) -> Result<BTreeMap<String, HostTensor>, BackendError> {
        let mut bound = HashMap::new();
        for spec in &self.inputs {
            let value = inputs
                .get(&spec.name)
                .ok_or_else(|| BackendError::MissingInput(spec.name.clone()))?;
            bound.insert(spec.name.clone(), self.to_interp(spec, value)?);
        }
        let opts = RunOptions {
            seed: rng.seed,
            step: rng.step,
            precision: Precision::Declared,
        };
        let out =
            interp::run(&self.graph, &self.bindings, &bound, &self.state, &opts).map_err(exec)?;
        for (name, t) in out.updates {
            self.state.insert(name, t);
        }
        Ok(out
            .outputs
            .iter()
            .map(|(n, t)| (n.clone(), host(t)))
            .collect())
    }
}

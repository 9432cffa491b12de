//! `CpuBackend`: the fused CPU executor behind the `Backend` trait the run loops drive.
//!
//! Owns an [`Executor`] for one compiled training (or evaluation) step: persistent state lives in
//! the executor's arena, initialised exactly as `interp::init_params` draws it (same seed, same
//! values), inputs are copied in by name, outputs copied out. `profile()` reports time and
//! GFLOP/s per kernel kind (what `kiln train --profile` prints).

use std::collections::BTreeMap;

use kiln_compiler::interp::round_to;
use kiln_compiler::ir::{rng, Bindings, DType, Graph};
use kiln_compiler::kernel::data::WordType;
use kiln_compiler::passes::fusion::fuse;
use kiln_compiler::program::Program;

use super::exec::{ExecError, Executor, Profile};
use super::jit::KernelCache;
use crate::backend::{Backend, BackendError, InputTensor, StepRng};
use crate::checkpoint::HostTensor;

pub struct CpuBackend {
    exec: Executor,
}

fn exec_err(e: ExecError) -> BackendError {
    BackendError::Exec(e.to_string())
}

impl CpuBackend {
    /// Prepares `program` and initialises its state from `seed` (as `interp::init_params`).
    pub fn new(program: Program, seed: u64) -> Result<CpuBackend, BackendError> {
        let cache = KernelCache::new();
        let exec = Executor::new(program, &cache).map_err(exec_err)?;
        let mut b = CpuBackend { exec };
        b.init_state(seed);
        Ok(b)
    }

    /// Binds a step graph (attention already recognised, cleanup passes already run), fuses it
    /// and prepares it.
    pub fn from_graph(
        graph: &Graph,
        bindings: &Bindings,
        seed: u64,
    ) -> Result<CpuBackend, BackendError> {
        let bound = graph
            .bind(bindings)
            .map_err(|e| BackendError::Exec(e.to_string()))?;
        let program = fuse(&bound).map_err(|e| BackendError::Exec(e.to_string()))?;
        CpuBackend::new(program, seed)
    }

    pub fn program(&self) -> &Program {
        self.exec.program()
    }

    pub fn executor(&self) -> &Executor {
        &self.exec
    }

    /// Bytes of the arena the executor allocated (the plan `kiln plan` reports for this step).
    pub fn arena_bytes(&self) -> usize {
        self.exec.arena_bytes()
    }

    /// Draws every state tensor from `seed` (`ir::rng::init_element`, rounded to f32).
    pub fn init_state(&mut self, seed: u64) {
        let decls = self.exec.program().state.clone();
        for s in decls {
            let key = rng::param_key(seed, &s.name);
            let n: usize = s.shape.iter().product();
            let words: Vec<u32> = (0..n as u64)
                .map(|i| {
                    (round_to(DType::F32, rng::init_element(&s.init, key, i)) as f32).to_bits()
                })
                .collect();
            let view = kiln_compiler::program::View::whole(s.buffer, n);
            self.exec.write(&view, &words);
        }
    }

    /// Starts or stops timing every launch.
    pub fn set_profiling(&mut self, on: bool) {
        self.exec.set_profiling(on);
    }

    pub fn reset_profile(&mut self) {
        self.exec.reset_profile();
    }

    /// Time and GFLOP/s per kernel kind since the last reset (profiling must be on).
    pub fn profile(&self) -> Profile {
        self.exec.profile()
    }
}

impl CpuBackend {
    /// Per kernel kind, then the `top` program steps whose fastest launch took longest.
    pub fn profile_text(&self, top: usize) -> String {
        use std::fmt::Write as _;
        let mut s = self.profile().to_string();
        // By phase of the step, from each kernel's name path: `optim*` is the optimizer (global
        // norm, clipping, update), `bwd*` the backward, the rest the forward and the loss.
        let all = self.exec.slowest_steps(usize::MAX);
        let mut phases = [
            ("forward + loss", 0.0f64, 0usize),
            ("backward", 0.0, 0),
            ("optimizer", 0.0, 0),
        ];
        for (i, t) in &all {
            let o = &self.exec.program().steps[*i].origin;
            let k = if o.starts_with("optim") {
                2
            } else if o.starts_with("bwd") {
                1
            } else {
                0
            };
            phases[k].1 += t.as_secs_f64() * 1e3;
            phases[k].2 += 1;
        }
        let _ = writeln!(s, "by phase (sum of each kernel's fastest launch):");
        for (name, ms, n) in phases {
            let _ = writeln!(s, "  {name:<16} {n:>5} launches {ms:>9.3} ms");
        }
        let _ = writeln!(s, "slowest kernels (fastest launch of each, ms):");
        for (i, t) in self.exec.slowest_steps(top) {
            let st = &self.exec.program().steps[i];
            let size = match st.launch {
                kiln_compiler::program::Launch::Grid { rows, cols } => format!("{rows}x{cols}"),
                kiln_compiler::program::Launch::Once => match &st.kernel {
                    kiln_compiler::kernel::Kernel::Gemm(g) => {
                        format!("b{} m{} n{} k{}", g.batch, g.m, g.n, g.k)
                    }
                    _ => String::new(),
                },
            };
            let _ = writeln!(
                s,
                "  {:>8.3}  s{:<4} {:<16} {:<20} {}",
                t.as_secs_f64() * 1e3,
                i,
                st.kind(),
                size,
                st.origin
            );
        }
        s
    }
}

impl Backend for CpuBackend {
    fn set_profiling(&mut self, on: bool) {
        self.exec.set_profiling(on);
    }

    fn profile_report(&self) -> Option<String> {
        Some(self.profile_text(15))
    }

    fn state_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let p = self.exec.program();
        let mut v: Vec<(String, Vec<usize>)> = p
            .state
            .iter()
            .filter(|s| s.trainable)
            .map(|s| (s.name.clone(), s.shape.clone()))
            .collect();
        v.extend(
            p.state
                .iter()
                .filter(|s| !s.trainable)
                .map(|s| (s.name.clone(), s.shape.clone())),
        );
        v
    }

    fn get_state(&self, name: &str) -> Result<HostTensor, BackendError> {
        let p = self.exec.program();
        let s = p
            .state_decl(name)
            .ok_or_else(|| BackendError::UnknownState(name.to_string()))?;
        let n: usize = s.shape.iter().product();
        let w = self
            .exec
            .read(&kiln_compiler::program::View::whole(s.buffer, n));
        Ok(HostTensor {
            shape: s.shape.clone(),
            data: w.iter().map(|x| f32::from_bits(*x)).collect(),
        })
    }

    fn set_state(&mut self, name: &str, value: &HostTensor) -> Result<(), BackendError> {
        let p = self.exec.program();
        let s = p
            .state_decl(name)
            .ok_or_else(|| BackendError::UnknownState(name.to_string()))?;
        let n: usize = s.shape.iter().product();
        if value.shape != s.shape || value.data.len() != n {
            return Err(BackendError::StateShape {
                name: name.to_string(),
                expected: s.shape.clone(),
                got: value.shape.clone(),
            });
        }
        let view = kiln_compiler::program::View::whole(s.buffer, n);
        let words: Vec<u32> = value.data.iter().map(|x| x.to_bits()).collect();
        self.exec.write(&view, &words);
        Ok(())
    }

    fn input_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.exec
            .program()
            .inputs
            .iter()
            .map(|i| (i.name.clone(), i.shape.clone()))
            .collect()
    }

    fn run(
        &mut self,
        inputs: &BTreeMap<String, InputTensor>,
        rng: StepRng,
    ) -> Result<BTreeMap<String, HostTensor>, BackendError> {
        for di in 0..self.exec.program().inputs.len() {
            let p = self.exec.program();
            let d = &p.inputs[di];
            let x = inputs
                .get(&d.name)
                .ok_or_else(|| BackendError::MissingInput(d.name.clone()))?;
            let n: usize = d.shape.iter().product();
            let len = match x {
                InputTensor::I32 { data, .. } => data.len(),
                InputTensor::F32 { data, .. } => data.len(),
            };
            let shape_ok = (x.shape() == d.shape.as_slice()
                || (x.shape().iter().product::<usize>() == n && d.shape.is_empty()))
                && len == n;
            let word = p.buffer(d.buffer).word;
            let int_into_float = matches!((x, word), (InputTensor::F32 { .. }, WordType::I32));
            if !shape_ok || int_into_float {
                return Err(BackendError::InputShape {
                    name: if int_into_float {
                        format!("{} (integers expected)", d.name)
                    } else {
                        d.name.clone()
                    },
                    expected: d.shape.clone(),
                    got: x.shape().to_vec(),
                });
            }
            let view = kiln_compiler::program::View::whole(d.buffer, n);
            match (x, word) {
                (InputTensor::I32 { data, .. }, WordType::I32) => {
                    self.exec.write_with(&view, |i| data[i] as u32)
                }
                (InputTensor::F32 { data, .. }, _) => {
                    self.exec.write_with(&view, |i| data[i].to_bits())
                }
                (InputTensor::I32 { data, .. }, WordType::F32) => {
                    self.exec.write_with(&view, |i| (data[i] as f32).to_bits())
                }
            }
        }
        self.exec.run_steps(rng.seed, rng.step).map_err(exec_err)?;
        let mut out = BTreeMap::new();
        for o in &self.exec.program().outputs {
            let w = self.exec.read(&o.view);
            out.insert(
                o.name.clone(),
                HostTensor {
                    shape: o.shape.clone(),
                    data: w.iter().map(|x| f32::from_bits(*x)).collect(),
                },
            );
        }
        Ok(out)
    }
}

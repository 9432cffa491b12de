//! The IR verifier: checks the invariants every stage relies on, so that a pass that breaks the
//! graph is caught right after it runs (tests verify after every pass).
//!
//! Checks: operands exist, arity, every node's stored type equals what its op's type rule infers
//! from its operands, acyclicity, outputs and updates refer to existing values, input and param
//! names are unique, and each update's target is a param (or other state) of the updated type.

use std::fmt;

use super::graph::{duplicate_source_names, Graph, ValueId};
use super::ops::{facts, infer};
use super::shape::TensorType;

/// One broken invariant, at a value when it has one.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyError {
    pub value: Option<ValueId>,
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value {
            Some(v) => write!(f, "{v}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

pub fn verify(g: &Graph) -> Result<(), Vec<VerifyError>> {
    let mut errs = Vec::new();
    let mut err =
        |value: Option<ValueId>, message: String| errs.push(VerifyError { value, message });
    for v in g.values() {
        let n = g.node(v);
        let fa = facts(n.op());
        if !fa.arity.accepts(n.inputs().len()) {
            err(
                Some(v),
                format!(
                    "{} takes {} operands, has {}",
                    fa.name,
                    fa.arity,
                    n.inputs().len()
                ),
            );
            continue;
        }
        let missing: Vec<ValueId> = n
            .inputs()
            .iter()
            .copied()
            .filter(|u| !g.contains(*u))
            .collect();
        if !missing.is_empty() {
            err(
                Some(v),
                format!("{} uses missing values {missing:?}", fa.name),
            );
            continue;
        }
        let types: Vec<&TensorType> = n.inputs().iter().map(|u| g.ty(*u)).collect();
        match infer(n.op(), &types) {
            Ok(t) if &t == n.ty() => {}
            Ok(t) => err(
                Some(v),
                format!("{} is typed {} but its rule gives {t}", fa.name, n.ty()),
            ),
            Err(e) => err(Some(v), e.to_string()),
        }
    }
    if g.topo_order().is_err() {
        err(None, "the graph has a cycle".into());
    }
    for o in g.outputs() {
        if !g.contains(o.value) {
            err(
                None,
                format!("output `{}` refers to missing {}", o.name, o.value),
            );
        }
    }
    for (kind, name) in duplicate_source_names(g) {
        err(None, format!("duplicate {kind} name `{name}`"));
    }
    for u in g.updates() {
        if !g.contains(u.value) {
            err(
                None,
                format!("update of `{}` refers to missing {}", u.target, u.value),
            );
            continue;
        }
        // Targets that are params must keep their type; other targets are declared by the runtime
        // and only need to exist there. Frozen (`trainable: false`) params may be updated: they
        // are state the step carries (optimizer moments, counters), never differentiated. That a
        // step leaves a frozen *weight* alone is `train::training_step`'s contract, tested there.
        if let Some(p) = g.find_param(&u.target) {
            if g.ty(p) != g.ty(u.value) {
                err(
                    Some(u.value),
                    format!(
                        "update of `{}` has type {}, param is {}",
                        u.target,
                        g.ty(u.value),
                        g.ty(p)
                    ),
                );
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

//! The evaluator's only door into the graph: emit a primitive op with the current name path, and
//! the numpy-broadcasting helpers the surface language needs on top of the IR's explicit
//! `Broadcast`.

use crate::ir::{shape_str, Dim, Graph, IrError, Op, Shape, TensorType, ValueId};

pub struct Lower {
    pub graph: Graph,
    scope: String,
}

impl Lower {
    pub fn new() -> Self {
        Lower {
            graph: Graph::new(),
            scope: String::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.graph.len()
    }

    pub fn set_scope(&mut self, path: String) {
        self.scope = path;
    }

    /// Emit one op; its type comes from the op table (`ir::infer`).
    pub fn node(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId, IrError> {
        let name = if self.scope.is_empty() {
            None
        } else {
            Some(self.scope.clone())
        };
        self.graph.add(op, inputs, name)
    }

    /// Emit a `Param` whose full name the evaluator has already checked to be unique (its
    /// `param_decls` table). `Graph::add` would check again by scanning every node, which made a
    /// spec with many parameters quadratic to check: a hostile `layers = 8000000` ran for minutes
    /// before reaching `MAX_NODES`. The type still comes from the op table.
    pub fn unique_param(&mut self, op: Op) -> Result<ValueId, IrError> {
        debug_assert!(matches!(op, Op::Param { .. }));
        let ty = crate::ir::infer(&op, &[])?;
        let name = if self.scope.is_empty() {
            None
        } else {
            Some(self.scope.clone())
        };
        Ok(self.graph.add_unchecked(op, &[], ty, name))
    }

    pub fn ty(&self, v: ValueId) -> TensorType {
        self.graph.ty(v).clone()
    }

    pub fn type_str(&self, v: ValueId) -> String {
        let t = self.graph.ty(v);
        format!("{}{}", t.dtype.name(), shape_str(&t.shape))
    }

    /// Whether a graph input already carries this name.
    pub fn has_input(&self, name: &str) -> bool {
        self.graph.find_input(name).is_some()
    }

    /// The numpy broadcast of several shapes (aligned on the right; a dim of 1 stretches).
    pub fn broadcast_shapes(&self, shapes: &[Shape]) -> Option<Shape> {
        let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
        let one = Dim::c(1);
        let mut out = Vec::with_capacity(rank);
        for i in 0..rank {
            let mut d: Option<Dim> = None;
            for s in shapes {
                let Some(k) = (i + s.len()).checked_sub(rank) else {
                    continue;
                };
                let x = &s[k];
                d = match d {
                    None => Some(x.clone()),
                    Some(cur) if cur == *x || *x == one => Some(cur),
                    Some(cur) if cur == one => Some(x.clone()),
                    Some(_) => return None,
                };
            }
            out.push(d.unwrap_or_else(|| one.clone()));
        }
        Some(out)
    }

    /// Broadcast `v` to `shape` numpy-style: drop the size-1 dims that stretch (`Reshape`), then add
    /// the missing axes (`Broadcast`).
    pub fn broadcast_to(&mut self, v: ValueId, shape: &Shape) -> Result<ValueId, IrError> {
        let src = self.graph.ty(v).shape.clone();
        if src == *shape {
            return Ok(v);
        }
        let one = Dim::c(1);
        let lead = shape
            .len()
            .checked_sub(src.len())
            .ok_or_else(|| IrError::BadAttribute {
                op: "broadcast".into(),
                input: None,
                detail: format!(
                    "cannot broadcast {} to {}",
                    shape_str(&src),
                    shape_str(shape)
                ),
            })?;
        let mut kept = Vec::new();
        let mut axes = Vec::new();
        for (i, target) in shape.iter().enumerate() {
            if i < lead {
                axes.push(i);
                continue;
            }
            let d = &src[i - lead];
            if d == target {
                kept.push(d.clone());
            } else if *d == one {
                axes.push(i);
            } else {
                return Err(IrError::BadAttribute {
                    op: "broadcast".into(),
                    input: None,
                    detail: format!(
                        "cannot broadcast {} to {}",
                        shape_str(&src),
                        shape_str(shape)
                    ),
                });
            }
        }
        let mut cur = v;
        if kept.len() != src.len() {
            cur = self.node(Op::Reshape { shape: kept }, &[cur])?;
        }
        if axes.is_empty() {
            return Ok(cur);
        }
        self.node(
            Op::Broadcast {
                shape: shape.clone(),
                axes,
            },
            &[cur],
        )
    }
}

impl Default for Lower {
    fn default() -> Self {
        Self::new()
    }
}

//! Reverse-mode autodiff as a pass: one VJP rule per op (the rules live in `ir::ops`).

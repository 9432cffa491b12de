//! Removes `stop_gradient`: forward it is the identity, and its only meaning — "no gradient flows
//! through here" — has been used up once autodiff has run. The pipeline runs this only on graphs
//! that nothing will differentiate again (`PipelineOptions::keep_stop_gradient` off), such as the
//! training step or an inference graph; removing it earlier would silently change gradients.
//!
//! Removing it lets CSE and the other passes see through it (softmax's `x - stop_gradient(max x)`
//! and the same `max x` used elsewhere become one value).

use crate::ir::{Graph, IrError, Op};

use super::{replace, PassResult, PassStats};

pub const NAME: &str = "strip_stop_gradient";

pub fn run(g: &mut Graph) -> Result<PassResult, IrError> {
    let mut stats = PassStats::new();
    for v in g.values() {
        let n = g.node(v);
        if matches!(n.op(), Op::StopGradient) {
            let x = n.inputs()[0];
            replace(g, v, x);
            stats.bump("removed");
        }
    }
    Ok(PassResult::from_stats(stats))
}

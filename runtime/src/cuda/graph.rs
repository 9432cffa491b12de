//! CUDA-graph capture and replay of a step: the step's launches (row kernels, attention, cuBLAS
//! calls, memsets) are recorded once on the device's stream and replayed with one
//! `cuGraphLaunch` per step, removing per-launch CPU overhead (hundreds of small kernels per step
//! for a small model).
//!
//! What makes replay correct: every address is fixed (one [`super::arena`]), and everything that
//! changes between steps (tokens, learning rate, step number for dropout) is *data* in the arena,
//! uploaded before the replay, never a kernel argument — which is why row programs take `Scalar`
//! inputs by device pointer. cuBLAS is given its own workspace so it does not allocate while
//! capturing.
//!
//! **Unverified until a GPU session.**

use cudarc::driver::{result, sys};

use super::device::Device;
use super::{driver_err, CudaError};

/// An instantiated graph.
#[derive(Debug)]
pub struct Graph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
}

// SAFETY: graph handles are plain driver handles; launches bind the device context first.
unsafe impl Send for Graph {}

impl Graph {
    /// Records what `record` enqueues on the device's stream. `record` must only enqueue work
    /// (launches, async copies and memsets on `device.stream()`), never synchronize.
    pub fn capture(
        device: &Device,
        record: impl FnOnce() -> Result<(), CudaError>,
    ) -> Result<Graph, CudaError> {
        device.bind()?;
        // SAFETY: the stream belongs to the bound context; thread-local mode only forbids
        // unsafe calls on this thread while capturing.
        unsafe {
            result::stream::begin_capture(
                device.stream(),
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        }
        .map_err(driver_err("cuStreamBeginCapture"))?;
        let recorded = record();
        // Always end the capture, even when recording failed, so the stream is usable again.
        // SAFETY: capture was begun on this stream above.
        let graph = unsafe { result::stream::end_capture(device.stream()) }
            .map_err(driver_err("cuStreamEndCapture"));
        let graph = match (recorded, graph) {
            (Err(e), Ok(g)) => {
                // SAFETY: a graph we own and will not use.
                let _ = unsafe { result::graph::destroy(g) };
                return Err(e);
            }
            (Err(e), Err(_)) => return Err(e),
            (Ok(()), g) => g?,
        };
        if graph.is_null() {
            return Err(CudaError::Driver {
                call: "cuStreamEndCapture",
                message: "captured an empty graph".into(),
            });
        }
        // SAFETY: `graph` is a valid captured graph.
        let exec =
            match unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) } {
                Ok(e) => e,
                Err(e) => {
                    // SAFETY: as above.
                    let _ = unsafe { result::graph::destroy(graph) };
                    return Err(driver_err("cuGraphInstantiate")(e));
                }
            };
        Ok(Graph { graph, exec })
    }

    /// Enqueues one replay on the device's stream.
    pub fn replay(&self, device: &Device) -> Result<(), CudaError> {
        device.bind()?;
        // SAFETY: the executable graph is valid and its addresses still allocated (the caller
        // keeps the arena alive as long as the graph).
        unsafe { result::graph::launch(self.exec, device.stream()) }
            .map_err(driver_err("cuGraphLaunch"))
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: created in `capture`, destroyed once.
        unsafe {
            let _ = result::graph::exec_destroy(self.exec);
            let _ = result::graph::destroy(self.graph);
        }
    }
}

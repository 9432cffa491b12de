//! One CUDA device as the backend uses it: its primary context, one non-blocking stream on which
//! everything runs in order (so a step can be captured as one CUDA graph), compiled modules
//! cached by source, raw launches, and host↔device copies.
//!
//! Why the driver API through `cudarc::driver::result` rather than cudarc's safe wrappers: the
//! executor works in one arena addressed by offsets and records a whole step in a graph; it
//! needs raw device pointers and plain `cuLaunchKernel`, not per-allocation event tracking.
//!
//! [`Device::open`] checks that the driver library exists before any call (cudarc panics
//! otherwise) and reports a missing GPU as an error.
//!
//! **Unverified until a GPU session** (everything past `open`'s library check needs a device).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys};

use super::nvrtc::{self, Source, Target};
use super::{driver_err, libs, CudaError};

/// What the backend needs to know about a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability (9, 0 on Hopper).
    pub arch: (u32, u32),
    pub sm_count: u32,
    /// Largest dynamic shared memory a block may opt into, in bytes.
    pub max_smem_optin: usize,
    pub total_mem: usize,
}

/// A loaded module and its entry points.
#[derive(Debug)]
pub struct Module {
    module: sys::CUmodule,
    functions: HashMap<String, sys::CUfunction>,
}

// SAFETY: module and function handles are plain driver handles valid in their context from any
// thread (the device binds its context before every use).
unsafe impl Send for Module {}
// SAFETY: as above; a loaded module is immutable.
unsafe impl Sync for Module {}

impl Module {
    /// The entry point `name`.
    pub fn function(&self, name: &str) -> Result<Function, CudaError> {
        self.functions
            .get(name)
            .map(|&f| Function {
                f,
                name: name.to_string(),
            })
            .ok_or_else(|| CudaError::Launch {
                name: name.into(),
                message: "no such entry point in the module".into(),
            })
    }
}

/// A kernel entry point.
#[derive(Clone, Debug)]
pub struct Function {
    f: sys::CUfunction,
    pub name: String,
}

// SAFETY: see `Module`.
unsafe impl Send for Function {}
// SAFETY: see `Module`.
unsafe impl Sync for Function {}

/// One kernel argument, passed by value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// A device pointer.
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// An open device.
#[derive(Debug)]
pub struct Device {
    info: DeviceInfo,
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    modules: Mutex<HashMap<String, Arc<Module>>>,
}

// SAFETY: the context and stream are driver handles usable from any thread once the context is
// made current, which every method does first; the module cache is behind a mutex.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

impl Device {
    /// Opens device `ordinal`: a clear error when the driver library or the device is missing.
    pub fn open(ordinal: usize) -> Result<Device, CudaError> {
        libs::require_driver()?;
        let no_device = |e: cudarc::driver::DriverError| CudaError::NoDevice {
            ordinal,
            message: format!("{e:?}"),
        };
        result::init().map_err(no_device)?;
        let count = result::device::get_count().map_err(no_device)?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::NoDevice {
                ordinal,
                message: format!("this machine has {count} CUDA device(s)"),
            });
        }
        let dev = result::device::get(ordinal as i32).map_err(no_device)?;
        // SAFETY: `dev` is a valid device handle; the primary context is released in Drop.
        let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(no_device)?;
        // SAFETY: `ctx` was just retained.
        unsafe { result::ctx::set_current(ctx) }.map_err(driver_err("cuCtxSetCurrent"))?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking)
            .map_err(driver_err("cuStreamCreate"))?;
        let attr = |a: sys::CUdevice_attribute| {
            // SAFETY: valid device; the attribute is a plain query.
            unsafe { result::device::get_attribute(dev, a) }
                .map_err(driver_err("cuDeviceGetAttribute"))
        };
        use sys::CUdevice_attribute as A;
        let major = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let sm_count = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let max_smem_optin = attr(A::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let name = result::device::get_name(dev).map_err(driver_err("cuDeviceGetName"))?;
        // SAFETY: valid device.
        let total_mem =
            unsafe { result::device::total_mem(dev) }.map_err(driver_err("cuDeviceTotalMem"))?;
        Ok(Device {
            info: DeviceInfo {
                ordinal,
                name,
                arch: (major.max(0) as u32, minor.max(0) as u32),
                sm_count: sm_count.max(1) as u32,
                max_smem_optin: max_smem_optin.max(0) as usize,
                total_mem,
            },
            dev,
            ctx,
            stream,
            modules: Mutex::default(),
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The stream everything runs on (for cuBLAS and graph capture).
    pub fn stream(&self) -> sys::CUstream {
        self.stream
    }

    /// Makes this device's context current on the calling thread.
    pub fn bind(&self) -> Result<(), CudaError> {
        // SAFETY: the context is retained for the life of `self`.
        unsafe { result::ctx::set_current(self.ctx) }.map_err(driver_err("cuCtxSetCurrent"))
    }

    /// The CUBIN target of this device.
    pub fn target(&self) -> Target {
        Target::Cubin {
            major: self.info.arch.0,
            minor: self.info.arch.1,
        }
    }

    /// Compiles (for this device's architecture) and loads `src`, once per distinct source.
    pub fn module(&self, src: &Source) -> Result<Arc<Module>, CudaError> {
        let key = format!("{}\u{0}{}\u{0}{}", src.name, src.fmad, src.code);
        {
            let cache = self.modules.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = cache.get(&key) {
                return Ok(Arc::clone(m));
            }
        }
        let image = nvrtc::compile(src, self.target())?;
        self.bind()?;
        // SAFETY: `image.bytes` is a complete CUBIN for this device's architecture and stays
        // alive for the call (the driver copies it).
        let module = unsafe { result::module::load_data(image.bytes.as_ptr() as *const c_void) }
            .map_err(driver_err("cuModuleLoadData"))?;
        let mut functions = HashMap::new();
        for k in &src.kernels {
            let cname = std::ffi::CString::new(k.as_str()).map_err(|_| CudaError::Launch {
                name: k.clone(),
                message: "entry name contains a NUL byte".into(),
            })?;
            // SAFETY: `module` is loaded; `cname` is NUL-terminated.
            let f = unsafe { result::module::get_function(module, cname) }
                .map_err(driver_err("cuModuleGetFunction"))?;
            functions.insert(k.clone(), f);
        }
        let m = Arc::new(Module { module, functions });
        let mut cache = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Arc::clone(cache.entry(key).or_insert(m)))
    }

    /// Lets `f` use up to `bytes` of dynamic shared memory (needed above 48 KiB).
    pub fn allow_smem(&self, f: &Function, bytes: usize) -> Result<(), CudaError> {
        if bytes > self.info.max_smem_optin {
            return Err(CudaError::Launch {
                name: f.name.clone(),
                message: format!(
                    "needs {bytes} bytes of shared memory; {} allows {}",
                    self.info.name, self.info.max_smem_optin
                ),
            });
        }
        self.bind()?;
        // SAFETY: `f` belongs to a module loaded in this context; the attribute takes a byte count.
        unsafe {
            result::function::set_function_attribute(
                f.f,
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
        }
        .map_err(driver_err("cuFuncSetAttribute"))
    }

    /// Enqueues `f` on the device's stream.
    ///
    /// # Safety
    /// `args` must match the kernel's parameter list in number, order and type, and every
    /// pointer must address device memory large enough for what the kernel touches at this grid.
    pub unsafe fn launch(
        &self,
        f: &Function,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        smem: u32,
        args: &[Arg],
    ) -> Result<(), CudaError> {
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(()); // Nothing to do (an empty launch is an error in CUDA).
        }
        // Each argument lives in its own 8-byte slot; the driver reads `size_of(param)` bytes
        // from each pointer.
        let mut slots: Vec<[u8; 8]> = args
            .iter()
            .map(|a| {
                let mut s = [0u8; 8];
                match *a {
                    Arg::Ptr(p) => s.copy_from_slice(&p.to_ne_bytes()),
                    Arg::I64(x) => s.copy_from_slice(&x.to_ne_bytes()),
                    Arg::I32(x) => s[..4].copy_from_slice(&x.to_ne_bytes()),
                    Arg::F32(x) => s[..4].copy_from_slice(&x.to_ne_bytes()),
                }
                s
            })
            .collect();
        let mut ptrs: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s.as_mut_ptr() as *mut c_void)
            .collect();
        self.bind()?;
        // SAFETY: forwarded to the caller's contract; `slots` outlives the call (the driver
        // copies the parameters at launch).
        unsafe { result::launch_kernel(f.f, grid, block, smem, self.stream, &mut ptrs) }.map_err(
            |e| CudaError::Launch {
                name: f.name.clone(),
                message: format!("{e:?}"),
            },
        )
    }

    /// Waits for everything enqueued so far.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: the stream belongs to this context.
        unsafe { result::stream::synchronize(self.stream) }
            .map_err(driver_err("cuStreamSynchronize"))
    }

    /// Allocates `bytes` of device memory (at least 1 byte).
    pub fn alloc(&self, bytes: usize) -> Result<DeviceBuffer<'_>, CudaError> {
        self.bind()?;
        // SAFETY: plain allocation in the current context, freed in DeviceBuffer's Drop.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(driver_err("cuMemAlloc"))?;
        Ok(DeviceBuffer {
            device: self,
            ptr,
            bytes,
        })
    }

    /// Copies `src` to device address `dst` (synchronously with respect to the stream).
    ///
    /// # Safety
    /// `dst` must address at least `size_of_val(src)` bytes of device memory.
    pub unsafe fn upload<T: Copy>(&self, dst: u64, src: &[T]) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: caller's contract; the stream is synchronized before `src` may be dropped.
        unsafe {
            result::memcpy_htod_async(dst, src, self.stream).map_err(driver_err("cuMemcpyHtoD"))?;
        }
        self.synchronize()
    }

    /// Copies from device address `src` into `dst` after all enqueued work.
    ///
    /// # Safety
    /// `src` must address at least `size_of_val(dst)` bytes of device memory.
    pub unsafe fn download<T: Copy>(&self, dst: &mut [T], src: u64) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: caller's contract; synchronized before returning, so `dst` is written.
        unsafe {
            result::memcpy_dtoh_async(dst, src, self.stream).map_err(driver_err("cuMemcpyDtoH"))?;
        }
        self.synchronize()
    }

    /// Sets `bytes` bytes at `dst` to zero, in stream order.
    ///
    /// # Safety
    /// `dst` must address at least `bytes` bytes of device memory.
    pub unsafe fn zero(&self, dst: u64, bytes: usize) -> Result<(), CudaError> {
        self.bind()?;
        // SAFETY: caller's contract.
        unsafe { result::memset_d8_async(dst, 0, bytes, self.stream) }
            .map_err(driver_err("cuMemsetD8Async"))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // Errors in teardown cannot be reported; the process keeps running without the device.
        let _ = self.bind();
        let mut cache = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        for (_, m) in cache.drain() {
            if let Ok(m) = Arc::try_unwrap(m) {
                // SAFETY: no function of this module can be used after the device is dropped.
                let _ = unsafe { result::module::unload(m.module) };
            }
        }
        // SAFETY: the stream and the primary-context reference were created in `open`.
        let _ = unsafe { result::stream::destroy(self.stream) };
        // SAFETY: as above.
        let _ = unsafe { result::primary_ctx::release(self.dev) };
    }
}

/// A device allocation owned by Rust (tests and scratch; the executor uses one [`super::arena`]).
#[derive(Debug)]
pub struct DeviceBuffer<'d> {
    device: &'d Device,
    ptr: sys::CUdeviceptr,
    bytes: usize,
}

impl DeviceBuffer<'_> {
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Uploads `src`; an error if it does not fit.
    pub fn write<T: Copy>(&self, src: &[T]) -> Result<(), CudaError> {
        if std::mem::size_of_val(src) > self.bytes {
            return Err(CudaError::Arena(format!(
                "writing {} bytes into a {}-byte buffer",
                std::mem::size_of_val(src),
                self.bytes
            )));
        }
        // SAFETY: the buffer holds at least `size_of_val(src)` bytes (checked).
        unsafe { self.device.upload(self.ptr, src) }
    }

    /// Downloads into `dst`; an error if it asks for more than the buffer holds.
    pub fn read<T: Copy>(&self, dst: &mut [T]) -> Result<(), CudaError> {
        if std::mem::size_of_val(dst) > self.bytes {
            return Err(CudaError::Arena(format!(
                "reading {} bytes from a {}-byte buffer",
                std::mem::size_of_val(dst),
                self.bytes
            )));
        }
        // SAFETY: the buffer holds at least `size_of_val(dst)` bytes (checked).
        unsafe { self.device.download(dst, self.ptr) }
    }
}

impl Drop for DeviceBuffer<'_> {
    fn drop(&mut self) {
        let _ = self.device.synchronize();
        // SAFETY: allocated by `Device::alloc`, freed once, after pending work finished.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

//! Compiling CUDA C with NVRTC, to PTX (`compute_XY`, loadable by any newer driver) or to CUBIN
//! (`sm_XY`, the device's own machine code: no driver JIT at load time).
//!
//! Why not cudarc's `compile_ptx`: it unwraps internally (program log, destroy) and cannot return
//! CUBIN; this is a small, panic-free wrapper over `cudarc::nvrtc::sys` that always returns
//! NVRTC's log with an error. Every call checks that NVRTC is loadable first ([`super::libs`]).

use std::ffi::{c_char, CStr, CString};

use cudarc::nvrtc::sys;

use super::{libs, CudaError};

/// What to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// PTX for the virtual architecture `compute_<major><minor>`.
    Ptx { major: u32, minor: u32 },
    /// CUBIN for the real architecture `sm_<major><minor>`.
    Cubin { major: u32, minor: u32 },
}

impl Target {
    /// Hopper (H100/H200): the architecture CI compiles for.
    pub const SM90_PTX: Target = Target::Ptx { major: 9, minor: 0 };
    pub const SM90_CUBIN: Target = Target::Cubin { major: 9, minor: 0 };

    fn arch_flag(self) -> String {
        match self {
            Target::Ptx { major, minor } => format!("--gpu-architecture=compute_{major}{minor}"),
            Target::Cubin { major, minor } => format!("--gpu-architecture=sm_{major}{minor}"),
        }
    }

    fn describe(self) -> String {
        match self {
            Target::Ptx { major, minor } => format!("PTX compute_{major}{minor}"),
            Target::Cubin { major, minor } => format!("CUBIN sm_{major}{minor}"),
        }
    }
}

/// A CUDA C translation unit and how to compile it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Source {
    /// Shown in errors and used as NVRTC's program name.
    pub name: String,
    pub code: String,
    /// Entry points (`extern "C" __global__`) the module defines, for loading.
    pub kernels: Vec<String>,
    /// Let the compiler contract `a * b + c` into FMAs. Off for row programs, whose IR states
    /// its FMAs explicitly (so results match the reference evaluator's rounding); on for the
    /// attention kernel.
    pub fmad: bool,
}

/// A compiled image: PTX text (NUL-terminated) or CUBIN bytes, ready for `cuModuleLoadData`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub target: Target,
    pub bytes: Vec<u8>,
    /// NVRTC's log (warnings), usually empty.
    pub log: String,
}

fn check(call: &'static str, r: sys::nvrtcResult) -> Result<(), CudaError> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Nvrtc(format!("{call}: {r:?}")))
    }
}

/// NVRTC's version `(major, minor)`.
pub fn version() -> Result<(i32, i32), CudaError> {
    libs::require_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); both pointers are valid for writes.
    check("nvrtcVersion", unsafe {
        sys::nvrtcVersion(&mut major, &mut minor)
    })?;
    Ok((major, minor))
}

/// Owns an `nvrtcProgram` and destroys it on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the handle came from a successful nvrtcCreateProgram and is destroyed once.
        // A failure to destroy leaks the program; there is nothing better to do in a drop.
        let _ = unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

impl Program {
    fn log(&self) -> String {
        let mut size = 0usize;
        // SAFETY: valid program handle; `size` is valid for writes.
        if unsafe { sys::nvrtcGetProgramLogSize(self.0, &mut size) }
            != sys::nvrtcResult::NVRTC_SUCCESS
        {
            return "(no log)".into();
        }
        let mut buf = vec![0u8; size.max(1)];
        // SAFETY: `buf` holds `size` bytes, the size NVRTC reported for the log.
        if unsafe { sys::nvrtcGetProgramLog(self.0, buf.as_mut_ptr() as *mut c_char) }
            != sys::nvrtcResult::NVRTC_SUCCESS
        {
            return "(no log)".into();
        }
        CStr::from_bytes_until_nul(&buf)
            .map(|s| s.to_string_lossy().trim_end().to_string())
            .unwrap_or_default()
    }
}

/// Compiles `src` for `target`. NVRTC errors come back as [`CudaError::Compile`] with the log.
pub fn compile(src: &Source, target: Target) -> Result<Image, CudaError> {
    libs::require_nvrtc()?;
    let code = CString::new(src.code.as_bytes())
        .map_err(|_| CudaError::Nvrtc(format!("`{}`: source contains a NUL byte", src.name)))?;
    let name = CString::new(format!("{}.cu", src.name).replace('\0', ""))
        .map_err(|_| CudaError::Nvrtc("program name contains a NUL byte".into()))?;
    let mut options = vec![
        target.arch_flag(),
        "--std=c++17".to_string(),
        format!("--fmad={}", src.fmad),
        // IEEE division and square root: the reference evaluator's rounding.
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        "--ftz=false".to_string(),
    ];
    if let Some(dir) = libs::cuda_include() {
        options.push(format!("--include-path={dir}"));
    }
    let options: Vec<CString> = options
        .into_iter()
        .map(|o| CString::new(o).map_err(|_| CudaError::Nvrtc("option with a NUL byte".into())))
        .collect::<Result<_, _>>()?;
    let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();

    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: `code` and `name` are NUL-terminated and outlive the program (dropped at the end of
    // this function, after `Program`); no headers are passed (count 0, null arrays).
    check("nvrtcCreateProgram", unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            code.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    })?;
    let prog = Program(raw);
    // SAFETY: valid program; `option_ptrs` points at `options.len()` NUL-terminated strings that
    // live until the end of this function.
    let r =
        unsafe { sys::nvrtcCompileProgram(prog.0, option_ptrs.len() as i32, option_ptrs.as_ptr()) };
    let log = prog.log();
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::Compile {
            name: src.name.clone(),
            arch: target.describe(),
            log: if log.is_empty() {
                format!("{r:?}")
            } else {
                log
            },
        });
    }
    let bytes = match target {
        Target::Ptx { .. } => {
            let mut size = 0usize;
            // SAFETY: valid, compiled program; `size` valid for writes.
            check("nvrtcGetPTXSize", unsafe {
                sys::nvrtcGetPTXSize(prog.0, &mut size)
            })?;
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` holds the `size` bytes NVRTC asked for (PTX plus its NUL).
            check("nvrtcGetPTX", unsafe {
                sys::nvrtcGetPTX(prog.0, buf.as_mut_ptr() as *mut c_char)
            })?;
            buf
        }
        Target::Cubin { .. } => {
            let mut size = 0usize;
            // SAFETY: as above.
            check("nvrtcGetCUBINSize", unsafe {
                sys::nvrtcGetCUBINSize(prog.0, &mut size)
            })?;
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` holds the `size` bytes NVRTC asked for.
            check("nvrtcGetCUBIN", unsafe {
                sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr() as *mut c_char)
            })?;
            buf
        }
    };
    if bytes.is_empty() {
        return Err(CudaError::Nvrtc(format!(
            "`{}`: NVRTC returned an empty {}",
            src.name,
            target.describe()
        )));
    }
    Ok(Image { target, bytes, log })
}

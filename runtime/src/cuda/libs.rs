//! Finding the CUDA shared libraries before cudarc touches them.
//!
//! cudarc (with `dynamic-loading`) opens `libcuda`, `libnvrtc`, `libcublas` and `libcublasLt` by
//! their bare names on first use and *panics* when none of its candidate names loads. So every
//! entry point of this backend calls one of the `require_*` functions here first, which returns
//! [`CudaError::LibraryMissing`] instead.
//!
//! NVRTC may also come from a PyPI wheel that is not on the loader's search path (CI:
//! `scripts/install-nvrtc.sh`). `KILN_NVRTC_LIB` names the library by absolute path; we open it
//! once and keep it open, and because the loader matches later bare-name requests
//! (`libnvrtc.so.12`) against the sonames of libraries already loaded, cudarc then finds it
//! without `LD_LIBRARY_PATH` (which the loader reads only at process start).

use std::sync::OnceLock;

use super::CudaError;

/// Environment variable: absolute path of `libnvrtc.so.12` (set from `scripts/install-nvrtc.sh`).
pub const NVRTC_LIB_ENV: &str = "KILN_NVRTC_LIB";
/// Environment variable: a folder of CUDA headers (`cuda_bf16.h`, ...) passed to NVRTC as an
/// include path. The generated kernels include no header, so this is optional.
pub const CUDA_INCLUDE_ENV: &str = "KILN_CUDA_INCLUDE";

const NVRTC_HINT: &str = "install NVRTC (scripts/install-nvrtc.sh prints KILN_NVRTC_LIB=...; \
     or put the CUDA toolkit's lib64 folder on LD_LIBRARY_PATH)";

/// Opens the library named by `KILN_NVRTC_LIB` (if set) and keeps it loaded for the life of the
/// process. Returns the error text of a failed open.
fn preload_nvrtc() -> Result<(), String> {
    static PRELOADED: OnceLock<Result<(), String>> = OnceLock::new();
    PRELOADED
        .get_or_init(|| {
            let Some(path) = std::env::var_os(NVRTC_LIB_ENV) else {
                return Ok(());
            };
            // SAFETY: loading NVRTC runs its initialisers, which have no preconditions; the
            // library is kept loaded forever (leaked) so no symbol taken from it can dangle.
            match unsafe { libloading::Library::new(&path) } {
                Ok(lib) => {
                    std::mem::forget(lib);
                    Ok(())
                }
                Err(e) => Err(format!(
                    "{NVRTC_LIB_ENV}={} could not be opened: {e}",
                    path.to_string_lossy()
                )),
            }
        })
        .clone()
}

/// NVRTC is loadable (preloading `KILN_NVRTC_LIB` first).
pub fn require_nvrtc() -> Result<(), CudaError> {
    preload_nvrtc().map_err(|hint| CudaError::LibraryMissing {
        lib: "libnvrtc",
        hint,
    })?;
    // SAFETY: only tries to open the library by its candidate names; no symbol is used.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::LibraryMissing {
            lib: "libnvrtc",
            hint: NVRTC_HINT.into(),
        })
    }
}

/// Whether NVRTC can be used (no error text).
pub fn nvrtc_available() -> bool {
    require_nvrtc().is_ok()
}

/// The NVIDIA driver library (`libcuda.so.1`) is loadable.
pub fn require_driver() -> Result<(), CudaError> {
    // SAFETY: only tries to open the library by its candidate names; no symbol is used.
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(CudaError::LibraryMissing {
            lib: "libcuda (the NVIDIA driver)",
            hint: "no NVIDIA driver on this machine; the CUDA backend needs a GPU".into(),
        })
    }
}

/// cuBLAS and cuBLASLt are loadable.
pub fn require_cublas() -> Result<(), CudaError> {
    let hint = "put the folder holding libcublas.so.12 and libcublasLt.so.12 on LD_LIBRARY_PATH \
                (CUDA toolkit lib64, or pip's nvidia-cublas-cu12 wheel)";
    // SAFETY: only tries to open the libraries by their candidate names; no symbol is used.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(CudaError::LibraryMissing {
            lib: "libcublas",
            hint: hint.into(),
        });
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
        return Err(CudaError::LibraryMissing {
            lib: "libcublasLt",
            hint: hint.into(),
        });
    }
    Ok(())
}

/// The include folder from `KILN_CUDA_INCLUDE`, if set and existing.
pub fn cuda_include() -> Option<String> {
    let dir = std::env::var(CUDA_INCLUDE_ENV).ok()?;
    std::path::Path::new(&dir).is_dir().then_some(dir)
}

//! The device arena: one allocation made once per program, in which every tensor of a step
//! (parameters, gradients, optimizer state, activations, scratch) lives at a planned offset.
//!
//! Why one allocation: a captured CUDA graph bakes in device addresses, so they must not change
//! between steps; one `cuMemAlloc` also avoids allocator traffic inside the step. The offsets come
//! from the compiler's memory planner; [`ArenaLayout`] is the simple bump layout used until the
//! executor consumes that plan (and by the tests).
//!
//! The layout arithmetic is tested here without a GPU; [`Arena`] itself is **unverified until a
//! GPU session**.

use super::device::{Device, DeviceBuffer};
use super::CudaError;

/// Alignment of every region (bytes): enough for vectorised loads and cuBLAS.
pub const ALIGN: usize = 256;

/// A byte range of the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub offset: usize,
    pub bytes: usize,
}

/// Named regions laid out one after another, each aligned to [`ALIGN`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArenaLayout {
    size: usize,
    regions: Vec<(String, Region)>,
}

impl ArenaLayout {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a region of `bytes` bytes (an error on overflow).
    pub fn push(&mut self, name: impl Into<String>, bytes: usize) -> Result<Region, CudaError> {
        let overflow = || CudaError::Arena("layout size overflows usize".into());
        let offset = self
            .size
            .checked_next_multiple_of(ALIGN)
            .ok_or_else(overflow)?;
        let end = offset.checked_add(bytes).ok_or_else(overflow)?;
        let r = Region { offset, bytes };
        self.size = end;
        self.regions.push((name.into(), r));
        Ok(r)
    }

    /// Total bytes to allocate.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn regions(&self) -> &[(String, Region)] {
        &self.regions
    }

    /// The region called `name`.
    pub fn get(&self, name: &str) -> Option<Region> {
        self.regions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| *r)
    }
}

/// The device memory of a layout.
#[derive(Debug)]
pub struct Arena<'d> {
    buf: DeviceBuffer<'d>,
}

impl<'d> Arena<'d> {
    /// Allocates `layout.size()` bytes once.
    pub fn new(device: &'d Device, layout: &ArenaLayout) -> Result<Arena<'d>, CudaError> {
        Ok(Arena {
            buf: device.alloc(layout.size())?,
        })
    }

    pub fn bytes(&self) -> usize {
        self.buf.bytes()
    }

    /// Device address of a region, checked against the allocation.
    pub fn ptr(&self, r: Region) -> Result<u64, CudaError> {
        check_region(r, self.buf.bytes())?;
        Ok(self.buf.ptr() + r.offset as u64)
    }
}

/// A region must lie inside an allocation of `size` bytes.
pub fn check_region(r: Region, size: usize) -> Result<(), CudaError> {
    match r.offset.checked_add(r.bytes) {
        Some(end) if end <= size => Ok(()),
        _ => Err(CudaError::Arena(format!(
            "region [{}, +{}) is outside the {size}-byte arena",
            r.offset, r.bytes
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_are_aligned_disjoint_and_inside() {
        let mut l = ArenaLayout::new();
        let sizes = [1usize, 255, 256, 257, 0, 4096, 3];
        let regs: Vec<Region> = sizes
            .iter()
            .enumerate()
            .map(|(i, &b)| l.push(format!("t{i}"), b).unwrap())
            .collect();
        for (i, r) in regs.iter().enumerate() {
            assert_eq!(r.offset % ALIGN, 0);
            assert_eq!(r.bytes, sizes[i]);
            check_region(*r, l.size()).unwrap();
            if i > 0 {
                let p = regs[i - 1];
                assert!(p.offset + p.bytes <= r.offset);
            }
        }
        assert_eq!(l.get("t3"), Some(regs[3]));
        assert_eq!(l.get("nope"), None);
        assert!(check_region(
            Region {
                offset: l.size(),
                bytes: 1
            },
            l.size()
        )
        .is_err());
        assert!(check_region(
            Region {
                offset: usize::MAX,
                bytes: 2
            },
            l.size()
        )
        .is_err());
        let mut big = ArenaLayout::new();
        big.push("a", usize::MAX - 10).unwrap();
        assert!(big.push("b", 100).is_err());
    }
}

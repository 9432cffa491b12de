//! Reading safetensors files and checkpoint folders, single-file or sharded.
//!
//! Files are memory-mapped and each tensor is copied out once, widened to f32 (f16 and bf16 are
//! exact in f32), so a multi-gigabyte checkpoint is never held twice. The `safetensors` crate
//! validates the header (offsets cover the data exactly, shapes match byte counts); this module
//! adds what a folder needs: the index agrees with the shards, no tensor is defined twice, and
//! shard names cannot point outside the folder.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

use super::{
    io_err, HfCheckpoint, HfConfig, HfError, IntTensor, StoredDtype, TensorFile, WeightsLayout,
    CONFIG_FILE, INDEX_FILE, WEIGHTS_FILE,
};
use crate::checkpoint::HostTensor;

/// IEEE half precision to f32, exactly (subnormals, infinities and NaN payloads included).
pub fn widen_f16(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exp = u32::from((bits >> 10) & 0x1f);
    let man = u32::from(bits & 0x3ff);
    let out = match (exp, man) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = man * 2^-24; renormalize so the leading 1 becomes implicit.
            let shift = man.leading_zeros() - 21; // bring the top set bit to position 10
            let man = (man << shift) & 0x3ff;
            let exp = 127 - 15 + 1 - shift;
            sign | (exp << 23) | (man << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(out)
}

/// bfloat16 to f32: bfloat16 is the top half of an f32.
pub fn widen_bf16(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

fn stored_dtype(d: Dtype) -> Option<StoredDtype> {
    match d {
        Dtype::F32 => Some(StoredDtype::F32),
        Dtype::F16 => Some(StoredDtype::F16),
        Dtype::BF16 => Some(StoredDtype::Bf16),
        Dtype::I32 => Some(StoredDtype::I32),
        Dtype::I64 => Some(StoredDtype::I64),
        // `Dtype` is non-exhaustive upstream; everything else (f64, fp8, bool, ...) is refused.
        _ => None,
    }
}

/// Reads one safetensors file: float tensors widened to f32, integer tensors to i64.
pub fn read_safetensors(path: &Path) -> Result<TensorFile, HfError> {
    read_file(path, true)
}

fn read_file(path: &Path, ints_allowed: bool) -> Result<TensorFile, HfError> {
    let corrupt = |reason: String| HfError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    if len < 8 {
        return Err(corrupt(format!(
            "it has {len} bytes, fewer than the 8-byte header length that starts every safetensors file"
        )));
    }
    // SAFETY: the map is only read, and every tensor is copied out before it is dropped. Another
    // process truncating the file meanwhile could fault the read, as with every mmap-based
    // loader (`safetensors`' own Python `safe_open` included); we accept that, as they do.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&map).map_err(|e| corrupt(e.to_string()))?;
    let tensors = SafeTensors::deserialize(&map).map_err(|e| corrupt(e.to_string()))?;

    let mut out = TensorFile {
        floats: BTreeMap::new(),
        ints: BTreeMap::new(),
        dtypes: BTreeMap::new(),
        metadata: meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    };
    for (name, view) in tensors.iter() {
        let dtype = stored_dtype(view.dtype())
            .filter(|d| ints_allowed || d.is_float())
            .ok_or_else(|| HfError::Dtype {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                dtype: format!("{:?}", view.dtype()),
                ints_allowed,
            })?;
        let bytes = view.data();
        let shape = view.shape().to_vec();
        let le2 = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
        match dtype {
            StoredDtype::F32 => {
                let data = bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                out.floats
                    .insert(name.to_string(), HostTensor { shape, data });
            }
            StoredDtype::F16 => {
                let data = bytes.chunks_exact(2).map(|c| widen_f16(le2(c))).collect();
                out.floats
                    .insert(name.to_string(), HostTensor { shape, data });
            }
            StoredDtype::Bf16 => {
                let data = bytes.chunks_exact(2).map(|c| widen_bf16(le2(c))).collect();
                out.floats
                    .insert(name.to_string(), HostTensor { shape, data });
            }
            StoredDtype::I32 => {
                let data = bytes
                    .chunks_exact(4)
                    .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect();
                out.ints.insert(name.to_string(), IntTensor { shape, data });
            }
            StoredDtype::I64 => {
                let data = bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect();
                out.ints.insert(name.to_string(), IntTensor { shape, data });
            }
        }
        out.dtypes.insert(name.to_string(), dtype);
    }
    Ok(out)
}

/// Reads a checkpoint folder: `config.json` plus `model.safetensors`, or, when that is absent,
/// `model.safetensors.index.json` and the shards it names (the order `from_pretrained` tries).
pub fn read_checkpoint(dir: &Path) -> Result<HfCheckpoint, HfError> {
    if !dir.is_dir() {
        return Err(io_err(dir, "no such folder"));
    }
    let config_path = dir.join(CONFIG_FILE);
    if !config_path.is_file() {
        return Err(HfError::MissingFile {
            dir: dir.to_path_buf(),
            file: CONFIG_FILE.to_string(),
        });
    }
    let config = HfConfig::from_file(&config_path)?;

    let single = dir.join(WEIGHTS_FILE);
    let index = dir.join(INDEX_FILE);
    let (file, layout) = if single.is_file() {
        (read_file(&single, false)?, WeightsLayout::Single)
    } else if index.is_file() {
        read_sharded(dir, &index)?
    } else {
        for pickle in ["pytorch_model.bin", "pytorch_model.bin.index.json"] {
            if dir.join(pickle).is_file() {
                return Err(HfError::PickleOnly {
                    dir: dir.to_path_buf(),
                    found: pickle.to_string(),
                });
            }
        }
        return Err(HfError::MissingFile {
            dir: dir.to_path_buf(),
            file: WEIGHTS_FILE.to_string(),
        });
    };
    Ok(HfCheckpoint {
        dir: dir.to_path_buf(),
        config,
        tensors: file.floats,
        dtypes: file.dtypes,
        layout,
    })
}

/// The index's `weight_map`, grouped by shard file (both in name order).
fn parse_index(index: &Path) -> Result<BTreeMap<String, Vec<String>>, HfError> {
    let bad = |reason: String| HfError::Index {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|e| io_err(index, e))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("it has no `weight_map` object".to_string()))?;
    let mut by_shard: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (tensor, shard) in map {
        let shard = shard
            .as_str()
            .ok_or_else(|| bad(format!("`weight_map.{tensor}` is {shard}, not a file name")))?;
        // A shard must be a plain file beside the index: never a path out of the folder.
        let plain = !shard.is_empty()
            && shard != "."
            && shard != ".."
            && !shard.contains(['/', '\\'])
            && Path::new(shard).file_name().is_some();
        if !plain {
            return Err(bad(format!(
                "`weight_map.{tensor}` names `{shard}`, which is not a file name in the folder"
            )));
        }
        by_shard
            .entry(shard.to_string())
            .or_default()
            .push(tensor.clone());
    }
    if by_shard.is_empty() {
        return Err(bad("its `weight_map` is empty".to_string()));
    }
    for tensors in by_shard.values_mut() {
        tensors.sort();
    }
    Ok(by_shard)
}

fn read_sharded(dir: &Path, index: &Path) -> Result<(TensorFile, WeightsLayout), HfError> {
    let by_shard = parse_index(index)?;
    // Report a missing shard before reading any: it is the common failure (an interrupted
    // download) and reading gigabytes first would only delay the message.
    for (shard, tensors) in &by_shard {
        if !dir.join(shard).is_file() {
            return Err(HfError::MissingShard {
                index: index.to_path_buf(),
                shard: shard.clone(),
                tensor: tensors[0].clone(),
                more: tensors.len() - 1,
            });
        }
    }
    let mut files = Vec::with_capacity(by_shard.len());
    // Which files hold each tensor, to tell a duplicate from a tensor the index forgot.
    let mut holders: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for (shard, listed) in &by_shard {
        let path = dir.join(shard);
        let file = read_file(&path, false)?;
        for tensor in listed {
            if !file.floats.contains_key(tensor) {
                return Err(HfError::NotInShard {
                    index: index.to_path_buf(),
                    shard: shard.clone(),
                    tensor: tensor.clone(),
                });
            }
        }
        for name in file.floats.keys() {
            holders.entry(name.clone()).or_default().push(path.clone());
        }
        files.push((listed, path, file));
    }
    for (tensor, paths) in &holders {
        if let [first, second, ..] = paths.as_slice() {
            return Err(HfError::DuplicateTensor {
                tensor: tensor.clone(),
                first: first.clone(),
                second: second.clone(),
            });
        }
    }
    let mut all = TensorFile {
        floats: BTreeMap::new(),
        ints: BTreeMap::new(),
        dtypes: BTreeMap::new(),
        metadata: BTreeMap::new(),
    };
    for (listed, path, file) in files {
        for (name, t) in file.floats {
            if listed.binary_search(&name).is_err() {
                return Err(HfError::NotInIndex { path, tensor: name });
            }
            all.dtypes.insert(name.clone(), file.dtypes[&name]);
            all.floats.insert(name, t);
        }
    }
    let shards = by_shard.into_keys().collect();
    Ok((all, WeightsLayout::Sharded { shards }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_widening_matches_known_values() {
        // Reference bit patterns from IEEE 754 binary16 tables.
        let cases: [(u16, f32); 10] = [
            (0x0000, 0.0),
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),
            (0x0400, 6.103_515_6e-5), // smallest normal
            (0x0001, 5.960_464_5e-8), // smallest subnormal
            (0x03ff, 6.097_555e-5),   // largest subnormal
            (0x7c00, f32::INFINITY),
            (0xfc00, f32::NEG_INFINITY),
        ];
        for (bits, want) in cases {
            assert_eq!(widen_f16(bits), want, "{bits:#06x}");
        }
        assert_eq!(widen_f16(0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(widen_f16(0x7e00).is_nan());
        // Every finite f16 widens to a value that rounds back to itself (checked via f64 math).
        for bits in 0..=u16::MAX {
            let x = widen_f16(bits);
            if x.is_finite() {
                let exp = (bits >> 10) & 0x1f;
                let man = f64::from(bits & 0x3ff);
                let mag = if exp == 0 {
                    man * 2f64.powi(-24)
                } else {
                    (1.0 + man / 1024.0) * 2f64.powi(i32::from(exp) - 15)
                };
                let want = if bits >> 15 == 1 { -mag } else { mag };
                assert_eq!(f64::from(x), want, "{bits:#06x}");
            }
        }
    }

    #[test]
    fn bf16_is_the_top_half_of_f32() {
        assert_eq!(widen_bf16(0x3f80), 1.0);
        assert_eq!(widen_bf16(0xc040), -3.0);
        assert_eq!(widen_bf16(0x0001), f32::from_bits(0x0001_0000));
    }
}

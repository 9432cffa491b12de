//! Training data: corpus loading, nanoGPT's train/val split, prepared token files, batches.
//!
//! The habits follow nanoGPT so that runs compare side by side: the validation split is the last
//! `val_fraction` of the corpus (`data[:int(n*0.9)]` / `data[int(n*0.9):]`, split on characters
//! before tokenizing, as `prepare.py` does), and a training batch is `batch_size` random windows
//! (`ix = randint(len(data) - block_size)`, `x = data[i:i+T]`, `y = data[i+1:i+1+T]`).
//!
//! Batches come from a seeded ChaCha8 stream whose exact position can be saved in a checkpoint and
//! restored, so a resumed run draws the same batches as an uninterrupted one. Train batches,
//! evaluation batches on the train split and on the validation split use separate streams, so
//! how often a run evaluates never changes which training batches it sees.

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use miette::Diagnostic;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::{DataSource, TokenizerConfig};
use crate::tokenizer::{CharTokenizer, Tokenizer, TokenizerError};

/// Why data could not be loaded, prepared or batched.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum DataError {
    #[error("data file `{path}` does not exist")]
    #[diagnostic(
        code(data::missing_file),
        help("paths in a run config are relative to the config's folder")
    )]
    MissingFile { path: PathBuf },
    #[error("cannot read or write `{path}`: {reason}")]
    #[diagnostic(code(data::io))]
    Io { path: PathBuf, reason: String },
    #[error("data file `{path}` is empty")]
    #[diagnostic(code(data::empty))]
    Empty { path: PathBuf },
    #[error("`{path}` is not valid UTF-8 at byte {offset} (line {line}, column {column})")]
    #[diagnostic(
        code(data::invalid_utf8),
        help("use `tokenizer: byte` to train on raw bytes")
    )]
    InvalidUtf8 {
        path: PathBuf,
        offset: usize,
        line: usize,
        column: usize,
    },
    #[error("the {split} split has {len} tokens, but a window of seq_len {seq_len} needs at least {need}")]
    #[diagnostic(
        code(data::too_short),
        help("lower `seq_len` or `data.val_fraction`, or use more data")
    )]
    TooShort {
        split: &'static str,
        len: usize,
        seq_len: usize,
        need: usize,
    },
    #[error("`{path}` is not a usable Kiln token file: {reason}")]
    #[diagnostic(
        code(data::token_file),
        help("write token files with `kiln data prepare`")
    )]
    TokenFile { path: PathBuf, reason: String },
    #[error("`val_fraction` must be in [0, 1), got {value}")]
    #[diagnostic(code(data::val_fraction))]
    ValFraction { value: f64 },
    #[error("invalid sampler state `{text}`: {reason}")]
    #[diagnostic(code(data::sampler_state))]
    SamplerState { text: String, reason: String },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Tokenizer(#[from] TokenizerError),
}

fn io_error(path: &Path, e: std::io::Error) -> DataError {
    if e.kind() == std::io::ErrorKind::NotFound {
        DataError::MissingFile {
            path: path.to_path_buf(),
        }
    } else {
        DataError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Corpus text and the split
// ---------------------------------------------------------------------------------------------

/// Reads a corpus file; missing and empty files are errors.
pub fn read_corpus(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    if bytes.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// Checks that a corpus is UTF-8, naming the first bad byte's line and column.
pub fn corpus_text(path: &Path, bytes: Vec<u8>) -> Result<String, DataError> {
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let good = &e.as_bytes()[..offset];
        // `good` is valid UTF-8 by construction.
        let good = std::str::from_utf8(good).unwrap_or_default();
        let line = good.matches('\n').count() + 1;
        let column = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        DataError::InvalidUtf8 {
            path: path.to_path_buf(),
            offset,
            line,
            column,
        }
    })
}

/// Index where the validation part starts among `n` units: `int(n * (1 - val_fraction))`.
pub fn split_index(n: usize, val_fraction: f64) -> usize {
    ((n as f64) * (1.0 - val_fraction))
        .floor()
        .clamp(0.0, n as f64) as usize
}

/// Splits text on characters as nanoGPT does: `(text[:k], text[k:])` with
/// `k = int(len(text) * (1 - val_fraction))` counted in characters.
pub fn split_text(text: &str, val_fraction: f64) -> (&str, &str) {
    let k = split_index(text.chars().count(), val_fraction);
    let byte = text.char_indices().nth(k).map_or(text.len(), |(i, _)| i);
    text.split_at(byte)
}

// ---------------------------------------------------------------------------------------------
// Token sequences
// ---------------------------------------------------------------------------------------------

/// A read-only sequence of token ids, in memory or in a mapped token file.
#[derive(Clone)]
pub struct Tokens(TokensRepr);

#[derive(Clone)]
enum TokensRepr {
    Owned(Arc<[u32]>),
    File {
        file: Arc<TokenFile>,
        start: usize,
        len: usize,
    },
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens(len {})", self.len())
    }
}

impl Tokens {
    /// Tokens held in memory.
    pub fn from_vec(ids: Vec<u32>) -> Tokens {
        Tokens(TokensRepr::Owned(ids.into()))
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            TokensRepr::Owned(v) => v.len(),
            TokensRepr::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `out.len()` tokens starting at `start`. The range must lie inside the sequence
    /// (callers index windows they have bounds-checked).
    pub fn copy_to(&self, start: usize, out: &mut [u32]) {
        match &self.0 {
            TokensRepr::Owned(v) => out.copy_from_slice(&v[start..start + out.len()]),
            TokensRepr::File {
                file, start: base, ..
            } => file.copy_tokens(base + start, out),
        }
    }

    /// All tokens as a vector.
    pub fn to_vec(&self) -> Vec<u32> {
        let mut out = vec![0; self.len()];
        self.copy_to(0, &mut out);
        out
    }
}

/// A tokenized corpus: its tokenizer and both splits.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub tokenizer: Tokenizer,
    pub train: Tokens,
    pub val: Tokens,
}

/// Builds the tokenizer a config asks for; a char vocabulary is built from `text`.
pub fn build_tokenizer(config: &TokenizerConfig, text: &str) -> Result<Tokenizer, DataError> {
    match config {
        TokenizerConfig::Char => Ok(Tokenizer::Char(CharTokenizer::from_text(text)?)),
        TokenizerConfig::Byte => Ok(Tokenizer::Byte),
        TokenizerConfig::TokenizerJson(path) => Ok(Tokenizer::from_tokenizer_json(path)?),
    }
}

/// Tokenizes a corpus and splits it: bytes for the byte tokenizer, else split on characters
/// first and tokenize each part (nanoGPT's `prepare.py`).
pub fn tokenize_corpus(
    path: &Path,
    tokenizer: &TokenizerConfig,
    val_fraction: f64,
) -> Result<(Tokenizer, Vec<u32>, Vec<u32>), DataError> {
    if !(val_fraction.is_finite() && (0.0..1.0).contains(&val_fraction)) {
        return Err(DataError::ValFraction {
            value: val_fraction,
        });
    }
    let bytes = read_corpus(path)?;
    if let TokenizerConfig::Byte = tokenizer {
        let k = split_index(bytes.len(), val_fraction);
        let ids: Vec<u32> = bytes.iter().map(|&b| u32::from(b)).collect();
        let val = ids[k..].to_vec();
        let mut train = ids;
        train.truncate(k);
        return Ok((Tokenizer::Byte, train, val));
    }
    let text = corpus_text(path, bytes)?;
    let tok = build_tokenizer(tokenizer, &text)?;
    let (train_text, val_text) = split_text(&text, val_fraction);
    let train = tok.encode(train_text)?;
    let val = tok.encode(val_text)?;
    Ok((tok, train, val))
}

/// Loads the data of a run: tokenizes a text corpus, or maps a prepared token file.
pub fn load_dataset(source: &DataSource) -> Result<Dataset, DataError> {
    match source {
        DataSource::Text {
            path,
            val_fraction,
            tokenizer,
        } => {
            let (tokenizer, train, val) = tokenize_corpus(path, tokenizer, *val_fraction)?;
            Ok(Dataset {
                tokenizer,
                train: Tokens::from_vec(train),
                val: Tokens::from_vec(val),
            })
        }
        DataSource::TokenFile { path } => {
            let file = Arc::new(TokenFile::open(path)?);
            Ok(Dataset {
                tokenizer: file.tokenizer.clone(),
                train: file.split(Split::Train),
                val: file.split(Split::Val),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Token files
// ---------------------------------------------------------------------------------------------

/// Magic bytes at the start of a token file.
pub const TOKEN_FILE_MAGIC: &[u8; 8] = b"KILNTOK\0";
/// Version of the token file layout.
pub const TOKEN_FILE_VERSION: u32 = 1;
const HEADER_LEN: usize = 64;

/// Which split of a token file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// A prepared token file, memory-mapped.
///
/// Layout (all little-endian): a 64-byte header — magic `KILNTOK\0`, u32 version (1), u32 bytes
/// per token (2 or 4), u64 token count, u64 train token count (the first ones; the rest are the
/// validation split), u64 vocabulary size, u64 length of the tokenizer JSON, 16 zero bytes — then
/// the tokenizer JSON ([`Tokenizer::to_json`]), then the tokens. u16 tokens are used whenever the
/// vocabulary fits (as nanoGPT's `train.bin`), halving the file.
pub struct TokenFile {
    path: PathBuf,
    map: memmap2::Mmap,
    data_start: usize,
    token_bytes: usize,
    n_tokens: usize,
    n_train: usize,
    /// The tokenizer the file was prepared with.
    pub tokenizer: Tokenizer,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("n_tokens", &self.n_tokens)
            .field("n_train", &self.n_train)
            .field("token_bytes", &self.token_bytes)
            .finish()
    }
}

/// What [`prepare_token_file`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareReport {
    pub vocab_size: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub token_bytes: usize,
}

/// Tokenizes `input` once and writes the token file `output` (atomically: a temporary file in
/// the same folder, then a rename).
pub fn prepare_token_file(
    input: &Path,
    tokenizer: &TokenizerConfig,
    val_fraction: f64,
    output: &Path,
) -> Result<PrepareReport, DataError> {
    let (tok, train, val) = tokenize_corpus(input, tokenizer, val_fraction)?;
    write_token_file(output, &tok, &train, &val)
}

/// Writes a token file from already tokenized splits.
pub fn write_token_file(
    output: &Path,
    tokenizer: &Tokenizer,
    train: &[u32],
    val: &[u32],
) -> Result<PrepareReport, DataError> {
    let vocab_size = tokenizer.vocab_size();
    let token_bytes = if vocab_size <= 1 << 16 { 2 } else { 4 };
    let json = tokenizer.to_json();
    let n_tokens = train.len() + val.len();

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(TOKEN_FILE_MAGIC);
    header.extend_from_slice(&TOKEN_FILE_VERSION.to_le_bytes());
    header.extend_from_slice(&(token_bytes as u32).to_le_bytes());
    for v in [n_tokens, train.len(), vocab_size, json.len()] {
        header.extend_from_slice(&(v as u64).to_le_bytes());
    }
    header.resize(HEADER_LEN, 0);

    let io = |e| io_error(output, e);
    let tmp = temp_path(output);
    let file = File::create(&tmp).map_err(io)?;
    let mut w = BufWriter::new(file);
    w.write_all(&header).map_err(io)?;
    w.write_all(json.as_bytes()).map_err(io)?;
    for &id in train.iter().chain(val) {
        if id as usize >= vocab_size {
            return Err(DataError::Tokenizer(TokenizerError::InvalidId {
                id,
                vocab_size,
            }));
        }
        if token_bytes == 2 {
            w.write_all(&(id as u16).to_le_bytes()).map_err(io)?;
        } else {
            w.write_all(&id.to_le_bytes()).map_err(io)?;
        }
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, output).map_err(io)?;
    Ok(PrepareReport {
        vocab_size,
        train_tokens: train.len(),
        val_tokens: val.len(),
        token_bytes,
    })
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".tmp-{name}"))
}

impl TokenFile {
    /// Maps and checks a token file: header, sizes, and that every id is inside the vocabulary
    /// (a full scan, about a second per GB, so a bad file fails here and not inside a kernel).
    pub fn open(path: &Path) -> Result<TokenFile, DataError> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        // SAFETY: the mapping is read-only and private to this process. Another process
        // truncating or rewriting the file while it is mapped would change what we read (or
        // fault); token files are written once by `prepare` through a rename, never in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_error(path, e))?;
        let bad = |reason: String| DataError::TokenFile {
            path: path.to_path_buf(),
            reason,
        };
        if map.len() < HEADER_LEN || &map[..8] != TOKEN_FILE_MAGIC {
            return Err(bad(
                "it does not start with the `KILNTOK` header".to_string()
            ));
        }
        let u32_at = |o: usize| u32::from_le_bytes(map[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |o: usize| u64::from_le_bytes(map[o..o + 8].try_into().unwrap_or([0; 8]));
        let version = u32_at(8);
        if version != TOKEN_FILE_VERSION {
            return Err(bad(format!(
                "format version {version}; this build reads version {TOKEN_FILE_VERSION}"
            )));
        }
        let token_bytes = u32_at(12) as usize;
        if token_bytes != 2 && token_bytes != 4 {
            return Err(bad(format!(
                "{token_bytes} bytes per token (expected 2 or 4)"
            )));
        }
        let to_usize = |v: u64, what: &str| {
            usize::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit in memory")))
        };
        let n_tokens = to_usize(u64_at(16), "token count")?;
        let n_train = to_usize(u64_at(24), "train token count")?;
        let vocab_size = to_usize(u64_at(32), "vocabulary size")?;
        let json_len = to_usize(u64_at(40), "tokenizer length")?;
        if n_train > n_tokens {
            return Err(bad(format!(
                "{n_train} train tokens out of {n_tokens} in all"
            )));
        }
        let data_start = HEADER_LEN
            .checked_add(json_len)
            .ok_or_else(|| bad("tokenizer length overflows".to_string()))?;
        let expected = n_tokens
            .checked_mul(token_bytes)
            .and_then(|b| b.checked_add(data_start));
        if expected != Some(map.len()) {
            return Err(bad(format!(
                "the header promises {n_tokens} tokens of {token_bytes} bytes after a {json_len}-byte tokenizer, but the file has {} bytes",
                map.len()
            )));
        }
        let json = std::str::from_utf8(&map[HEADER_LEN..data_start])
            .map_err(|_| bad("the tokenizer JSON is not UTF-8".to_string()))?;
        let tokenizer = Tokenizer::from_json(json)?;
        if tokenizer.vocab_size() != vocab_size {
            return Err(bad(format!(
                "the header says vocabulary {vocab_size} but its tokenizer has {}",
                tokenizer.vocab_size()
            )));
        }
        let file = TokenFile {
            path: path.to_path_buf(),
            map,
            data_start,
            token_bytes,
            n_tokens,
            n_train,
            tokenizer,
        };
        file.check_ids(vocab_size)?;
        Ok(file)
    }

    fn check_ids(&self, vocab_size: usize) -> Result<(), DataError> {
        let data = &self.map[self.data_start..];
        let bad_at = match self.token_bytes {
            2 => data
                .chunks_exact(2)
                .position(|c| u16::from_le_bytes([c[0], c[1]]) as usize >= vocab_size),
            _ => data
                .chunks_exact(4)
                .position(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize >= vocab_size),
        };
        match bad_at {
            None => Ok(()),
            Some(i) => Err(DataError::TokenFile {
                path: self.path.clone(),
                reason: format!(
                    "token {i} has id {} outside the vocabulary of {vocab_size}",
                    self.token(i)
                ),
            }),
        }
    }

    fn token(&self, i: usize) -> u32 {
        let o = self.data_start + i * self.token_bytes;
        let b = &self.map[o..o + self.token_bytes];
        match self.token_bytes {
            2 => u32::from(u16::from_le_bytes([b[0], b[1]])),
            _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }

    fn copy_tokens(&self, start: usize, out: &mut [u32]) {
        let o = self.data_start + start * self.token_bytes;
        let bytes = &self.map[o..o + out.len() * self.token_bytes];
        match self.token_bytes {
            2 => {
                for (dst, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *dst = u32::from(u16::from_le_bytes([c[0], c[1]]));
                }
            }
            _ => {
                for (dst, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *dst = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
    }

    /// Total tokens in both splits.
    pub fn len(&self) -> usize {
        self.n_tokens
    }

    pub fn is_empty(&self) -> bool {
        self.n_tokens == 0
    }

    /// Bytes per stored token (2 or 4).
    pub fn token_bytes(&self) -> usize {
        self.token_bytes
    }

    /// One split as a token sequence sharing the mapping.
    pub fn split(self: &Arc<Self>, split: Split) -> Tokens {
        let (start, len) = match split {
            Split::Train => (0, self.n_train),
            Split::Val => (self.n_train, self.n_tokens - self.n_train),
        };
        Tokens(TokensRepr::File {
            file: Arc::clone(self),
            start,
            len,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------------

/// A batch of `rows` windows: `inputs[r*T..(r+1)*T]` and the next-token `targets` alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Windows in this batch (the last sequential batch may hold fewer than `batch_size`).
    pub rows: usize,
    pub seq_len: usize,
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
}

/// Which random stream a sampler draws from; each has its own sequence for the same seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerStream {
    /// Training batches.
    Train,
    /// Loss estimates on the training split.
    TrainEval,
    /// Loss estimates on the validation split.
    ValEval,
}

impl SamplerStream {
    fn id(self) -> u64 {
        match self {
            SamplerStream::Train => 0,
            SamplerStream::TrainEval => 1,
            SamplerStream::ValEval => 2,
        }
    }
}

/// The exact position of a sampler's random stream, for checkpoints.
///
/// Its text form is `chacha8:<64 hex digits of seed>:<stream>:<word position>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerState {
    pub seed: [u8; 32],
    pub stream: u64,
    pub word_pos: u128,
}

impl fmt::Display for SamplerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("chacha8:")?;
        for b in self.seed {
            write!(f, "{b:02x}")?;
        }
        write!(f, ":{}:{}", self.stream, self.word_pos)
    }
}

impl FromStr for SamplerState {
    type Err = DataError;
    fn from_str(text: &str) -> Result<SamplerState, DataError> {
        let bad = |reason: &str| DataError::SamplerState {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = text.split(':').collect();
        let [kind, seed_hex, stream, word_pos] = parts[..] else {
            return Err(bad("expected `chacha8:SEED:STREAM:POSITION`"));
        };
        if kind != "chacha8" {
            return Err(bad("unknown generator (expected `chacha8`)"));
        }
        if seed_hex.len() != 64 || !seed_hex.is_ascii() {
            return Err(bad("the seed must be 64 hex digits"));
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&seed_hex[2 * i..2 * i + 2], 16)
                .map_err(|_| bad("the seed must be 64 hex digits"))?;
        }
        Ok(SamplerState {
            seed,
            stream: stream.parse().map_err(|_| bad("bad stream number"))?,
            word_pos: word_pos.parse().map_err(|_| bad("bad word position"))?,
        })
    }
}

/// nanoGPT's `get_batch`: `batch_size` windows at uniformly random offsets.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    rng: ChaCha8Rng,
    batch_size: usize,
    seq_len: usize,
}

impl BatchSampler {
    /// A sampler for the run seed and one of its streams.
    pub fn new(seed: u64, stream: SamplerStream, batch_size: usize, seq_len: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream.id());
        BatchSampler {
            rng,
            batch_size,
            seq_len,
        }
    }

    /// A sampler continuing exactly where `state` was taken.
    pub fn from_state(state: &SamplerState, batch_size: usize, seq_len: usize) -> Self {
        let mut rng = ChaCha8Rng::from_seed(state.seed);
        rng.set_stream(state.stream);
        rng.set_word_pos(state.word_pos);
        BatchSampler {
            rng,
            batch_size,
            seq_len,
        }
    }

    /// The current position of the random stream.
    pub fn state(&self) -> SamplerState {
        SamplerState {
            seed: self.rng.get_seed(),
            stream: self.rng.get_stream(),
            word_pos: self.rng.get_word_pos(),
        }
    }

    /// Draws a batch from `tokens` (`split` names it in errors).
    pub fn next_batch(&mut self, tokens: &Tokens, split: &'static str) -> Result<Batch, DataError> {
        let t = self.seq_len;
        let len = tokens.len();
        if t == 0 || len < t + 1 {
            return Err(DataError::TooShort {
                split,
                len,
                seq_len: t,
                need: t + 1,
            });
        }
        let b = self.batch_size;
        let mut inputs = vec![0u32; b * t];
        let mut targets = vec![0u32; b * t];
        let mut window = vec![0u32; t + 1];
        for r in 0..b {
            // ix ~ randint(len - T): offsets 0 ..= len - T - 1, so y's last token exists.
            let i = self.rng.random_range(0..(len - t) as u64) as usize;
            tokens.copy_to(i, &mut window);
            inputs[r * t..(r + 1) * t].copy_from_slice(&window[..t]);
            targets[r * t..(r + 1) * t].copy_from_slice(&window[1..]);
        }
        Ok(Batch {
            rows: b,
            seq_len: t,
            inputs,
            targets,
        })
    }
}

/// Every non-overlapping window of a split, in order, `batch_size` at a time: window `k` is
/// `x = data[kT..kT+T]`, `y = data[kT+1..kT+T+1]`, so each token after the first is a target
/// exactly once (a tail shorter than a window is left out). For a "full validation loss".
#[derive(Debug, Clone)]
pub struct SequentialBatches {
    tokens: Tokens,
    batch_size: usize,
    seq_len: usize,
    next: usize,
    windows: usize,
}

impl SequentialBatches {
    pub fn new(tokens: &Tokens, batch_size: usize, seq_len: usize) -> Self {
        let windows = if seq_len == 0 || batch_size == 0 {
            0
        } else {
            tokens.len().saturating_sub(1) / seq_len
        };
        SequentialBatches {
            tokens: tokens.clone(),
            batch_size,
            seq_len,
            next: 0,
            windows,
        }
    }

    /// Total windows (targets covered = windows × seq_len).
    pub fn windows(&self) -> usize {
        self.windows
    }
}

impl Iterator for SequentialBatches {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.windows {
            return None;
        }
        let t = self.seq_len;
        let rows = self.batch_size.min(self.windows - self.next);
        let mut inputs = vec![0u32; rows * t];
        let mut targets = vec![0u32; rows * t];
        let mut window = vec![0u32; t + 1];
        for r in 0..rows {
            self.tokens.copy_to((self.next + r) * t, &mut window);
            inputs[r * t..(r + 1) * t].copy_from_slice(&window[..t]);
            targets[r * t..(r + 1) * t].copy_from_slice(&window[1..]);
        }
        self.next += rows;
        Some(Batch {
            rows,
            seq_len: t,
            inputs,
            targets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_python_int_truncation() {
        assert_eq!(split_index(1_115_394, 0.1), 1_003_854);
        assert_eq!(split_index(10, 0.1), 9);
        assert_eq!(split_index(10, 0.0), 10);
        assert_eq!(split_text("aéb€c", 0.4), ("aéb", "€c"));
    }

    #[test]
    fn sampler_state_text_round_trips() {
        let mut s = BatchSampler::new(7, SamplerStream::Train, 2, 3);
        let tokens = Tokens::from_vec((0..100).collect());
        s.next_batch(&tokens, "train").unwrap();
        let st = s.state();
        let parsed: SamplerState = st.to_string().parse().unwrap();
        assert_eq!(parsed, st);
        assert!("chacha8:zz:0:0".parse::<SamplerState>().is_err());
        assert!("pcg:00:0:0".parse::<SamplerState>().is_err());
    }
}

#!/usr/bin/env python3
"""Writes the Hugging Face reference data that Kiln's tests compare against.

Run by hand from the repository root (never in CI; it needs torch):

    python3 -m pip install -r scripts/requirements-fixtures.txt
    python3 scripts/make_fixtures.py

It writes
  fixtures/<model>/            save_pretrained() of a small random-weight GPT-2, LLaMA (GQA), T5
      config.json, model.safetensors, generation_config.json
      io.safetensors           input_ids, labels (+ decoder_input_ids for T5), logits, loss and
                               grad.<name> for every parameter: forward and backward in float64
                               on the saved float32 weights, stored as float32
      tensors.txt              every saved tensor's name, dtype and shape; tied parameters; the
                               module tree as transformers prints it
      versions.json            library versions and what was computed how
  fixtures/llama_sharded/      the LLaMA weights again, sharded (model.safetensors.index.json)
  fixtures/gpt2_bf16/          the GPT-2 weights saved in bfloat16
  fixtures/dtypes.safetensors  values in f16/bf16 beside torch's widening of them to f32
  data/gpt2/                   OpenAI's encoder.json / vocab.bpe, their LICENSE, tokenizer.json
  fixtures/gpt2_tokenizer_ids.json  reference token ids for Tiny Shakespeare lines and tricky text

Everything is seeded: running it twice gives the same tensors (given the same library versions).
"""

import json
import os
import platform
import shutil
import sys
from pathlib import Path

import numpy
import regex
import safetensors
import safetensors.torch
import tokenizers
import torch
import transformers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPT2TokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
GPT2_DATA = ROOT / "data" / "gpt2"
SHARED_GPT2 = Path(os.environ.get("KILN_SHARED_GPT2", "/work/shared/data/gpt2"))

SEED = 1234
BATCH, SEQ, DEC_SEQ, VOCAB = 2, 8, 6, 96


def versions(extra):
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": numpy.__version__,
        "seed": SEED,
        **extra,
    }


def perturb_vectors(model, gen):
    """Biases start at 0 and norm gains at 1: a mapping that dropped or swapped one would still
    match. Nudging every 1-D parameter makes each of them matter."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def describe(model, path):
    sd = model.state_dict()
    saved = safetensors.torch.load_file(str(path / "model.safetensors")) if (
        path / "model.safetensors"
    ).exists() else None
    lines = ["# Saved tensors (model.safetensors): name dtype shape"]
    for name, t in (saved or sd).items():
        lines.append(f"{name} {str(t.dtype).replace('torch.', '')} {list(t.shape)}")
    params = dict(model.named_parameters(remove_duplicate=False))
    lines.append("")
    lines.append("# Tied parameters (not in the file; the same tensor as the right-hand name)")
    by_id = {}
    for name, p in params.items():
        by_id.setdefault(id(p), []).append(name)
    for names in by_id.values():
        for alias in names[1:]:
            lines.append(f"{alias} = {names[0]}")
    lines.append("")
    lines.append("# Buffers (not parameters)")
    for name, b in model.named_buffers():
        lines.append(f"{name} {str(b.dtype).replace('torch.', '')} {list(b.shape)}")
    lines.append("")
    lines.append(f"# Module tree ({type(model).__name__})")
    lines.extend(str(model).splitlines())
    (path / "tensors.txt").write_text("\n".join(lines) + "\n")


def reference(name, model, inputs, note):
    """Saves the float32 model, then runs forward + backward in float64 on exactly those
    weights and stores inputs, logits, loss and every parameter gradient as float32."""
    out_dir = FIXTURES / name
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir)
    describe(model, out_dir)

    saved = safetensors.torch.load_file(str(out_dir / "model.safetensors"))
    model64 = model.to(torch.float64)
    model64.eval()  # dropout is 0 everywhere anyway; eval makes that independent of configs
    model64.zero_grad()
    out = model64(**inputs)
    out.loss.backward()

    tensors = {k: v.contiguous() for k, v in inputs.items()}
    tensors["logits"] = out.logits.detach().float().contiguous()
    tensors["loss"] = out.loss.detach().float().reshape(())
    grads = dict(model64.named_parameters())
    assert sorted(grads) == sorted(saved), (sorted(grads), sorted(saved))
    for pname, p in grads.items():
        assert p.grad is not None, pname
        tensors[f"grad.{pname}"] = p.grad.detach().float().contiguous()
    safetensors.torch.save_file(tensors, str(out_dir / "io.safetensors"), metadata={"format": "pt"})
    (out_dir / "versions.json").write_text(
        json.dumps(versions({"note": note, "loss": out.loss.item()}), indent=2) + "\n"
    )
    model.to(torch.float32)
    print(f"{name}: loss {out.loss.item():.6f}, logits std {out.logits.std().item():.3f}")
    return out_dir


def ids(gen, shape, low):
    return torch.randint(low, VOCAB, shape, generator=gen, dtype=torch.int64)


def make_gpt2():
    torch.manual_seed(SEED)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=0.1,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(SEED + 1)
    perturb_vectors(model, gen)
    x = ids(gen, (BATCH, SEQ), 0)
    note = (
        "labels = input_ids; transformers shifts inside (logits[:, :-1] vs labels[:, 1:]); "
        "loss is the mean over batch*(seq-1) tokens"
    )
    return model, {"input_ids": x, "labels": x.clone()}, note


def make_llama():
    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=88,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        attention_dropout=0.0,
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(SEED + 2)
    perturb_vectors(model, gen)
    x = ids(gen, (BATCH, SEQ), 0)
    note = (
        "labels = input_ids; transformers shifts inside (logits[:, :-1] vs labels[:, 1:]); "
        "loss is the mean over batch*(seq-1) tokens; positions 0..seq-1"
    )
    return model, {"input_ids": x, "labels": x.clone()}, note


def make_t5():
    torch.manual_seed(SEED)
    config = T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
        layer_norm_epsilon=1e-6,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        attn_implementation="eager",
    )
    model = T5ForConditionalGeneration(config)
    gen = torch.Generator().manual_seed(SEED + 3)
    perturb_vectors(model, gen)
    # Ids from 2 up: 0 is pad (and the decoder start), 1 is eos; no padding in this batch.
    x = ids(gen, (BATCH, SEQ), 2)
    labels = ids(gen, (BATCH, DEC_SEQ), 2)
    dec = model._shift_right(labels)
    note = (
        "decoder_input_ids = labels shifted right with decoder_start_token_id 0; loss is the "
        "mean cross-entropy of logits vs labels over batch*dec_seq tokens (no shift); "
        "no attention mask (no padding)"
    )
    return model, {"input_ids": x, "decoder_input_ids": dec, "labels": labels}, note


def make_variants(llama, gpt2):
    sharded = FIXTURES / "llama_sharded"
    if sharded.exists():
        shutil.rmtree(sharded)
    llama.save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").exists(), "expected a sharded save"

    bf16 = FIXTURES / "gpt2_bf16"
    if bf16.exists():
        shutil.rmtree(bf16)
    gpt2.to(torch.bfloat16).save_pretrained(bf16)
    gpt2.to(torch.float32)

    # Widening references: every f16 / bf16 bit pattern class (normals, subnormals, zeros of
    # both signs, infinities, extremes) with torch's own conversion back to f32.
    specials = torch.tensor(
        [0.0, -0.0, 1.0, -2.5, 1 / 3, 65504.0, 6.1035156e-05, 5.96e-08, 1e-7, 3e38, -1e-40,
         float("inf"), float("-inf")],
        dtype=torch.float32,
    )
    gen = torch.Generator().manual_seed(SEED + 4)
    x = torch.cat([specials, torch.randn(243, generator=gen) * 10.0 ** torch.randint(-6, 6, (243,), generator=gen)])
    x16, xb16 = x.to(torch.float16), x.to(torch.bfloat16)
    safetensors.torch.save_file(
        {
            "f16": x16,
            "f16.widened": x16.float(),
            "bf16": xb16,
            "bf16.widened": xb16.float(),
            "f32": x,
            "i32": torch.arange(-3, 3, dtype=torch.int32).reshape(2, 3),
        },
        str(FIXTURES / "dtypes.safetensors"),
        metadata={"format": "pt"},
    )


# --- GPT-2 tokenizer ----------------------------------------------------------------------------


def bytes_to_unicode():
    """OpenAI's gpt-2/src/encoder.py mapping of bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class OpenAIEncoder:
    """OpenAI's original GPT-2 BPE (gpt-2/src/encoder.py), as a second, independent reference."""

    PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")

    def __init__(self, encoder, merges):
        self.encoder = encoder
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.cache = {}

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            new, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
        self.cache[token] = word
        return word

    def encode(self, text):
        out = []
        for tok in self.PAT.findall(text):
            tok = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            out.extend(self.encoder[t] for t in self.bpe(tok))
        return out


TRICKY = [
    "",
    " ",
    "Hello world",
    " Hello world",
    "Hello  world   with    runs     of      spaces",
    "trailing spaces   ",
    "   leading spaces",
    "tabs\tand\t\ttabs\n\n\nand newlines\r\nwindows line end",
    "\n",
    "\n\n \n  \n",
    "I'll've, don't, can't, won't, she's, they're, we'd, I'm, y'all, O'Neill's",
    "SHOUTING'S 'QUOTED' 'S 'T 'RE 'VE",
    "naïve café résumé Zoë façade",
    "Ünïcödé with combining: e\u0301 a\u0308 n\u0303",
    "中文字符和日本語のテキスト、한국어",
    "Ελληνικά κείμενα, русский текст, עברית, العربية",
    "emoji 👍 👍🏽 🎉🎉🎉 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️",
    "numbers 1234567890 3.14159 -42 1e-5 0x1F 1,000,000",
    "punctuation!!! ??? ... --- ((nested)) [brackets] {braces} <angles>",
    "code: fn main() { println!(\"hi\"); } // comment",
    "https://example.com/path?query=1&other=2#frag",
    "<|endoftext|>",
    "first document<|endoftext|>second document",
    "not special: <|endoftext| and <endoftext|>",
    "zero\u0000width\u200bspace\u00a0nbsp\u3000ideographic",
    "a" * 200,
    " ".join(["supercalifragilisticexpialidocious"] * 3),
    "\u2028line separator\u2029paragraph separator",
    "mixed 123abc abc123 a1b2c3 ＡＢＣ１２３",
]


def make_tokenizer():
    GPT2_DATA.mkdir(parents=True, exist_ok=True)
    for f in ["encoder.json", "vocab.bpe", "LICENSE"]:
        shutil.copyfile(SHARED_GPT2 / f, GPT2_DATA / f)
    encoder = json.loads((GPT2_DATA / "encoder.json").read_text(encoding="utf-8"))
    bpe_lines = (GPT2_DATA / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    assert bpe_lines[0].startswith("#version"), bpe_lines[0]
    merges = [tuple(line.split(" ")) for line in bpe_lines[1:] if line]
    assert all(len(m) == 2 for m in merges)

    # transformers 5 spells GPT2TokenizerFast(vocab_file, merges_file) with the parsed contents.
    tok = GPT2TokenizerFast(vocab=encoder, merges=merges)
    assert len(tok) == 50257 and tok.eos_token_id == 50256
    tok.backend_tokenizer.save(str(GPT2_DATA / "tokenizer.json"), pretty=False)
    reloaded = tokenizers.Tokenizer.from_file(str(GPT2_DATA / "tokenizer.json"))

    lines = (ROOT / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n")
    texts = [("shakespeare_line", line) for line in lines[:300]]
    texts += [
        ("shakespeare_chunk", "\n".join(lines[300:340])),
        ("shakespeare_chunk", "\n".join(lines[1000:1003]) + "\n"),
    ]
    texts += [("tricky", t) for t in TRICKY]

    openai = OpenAIEncoder(encoder, merges)
    cases = []
    for kind, text in texts:
        ids_ = tok(text, add_special_tokens=False)["input_ids"]
        assert reloaded.encode(text, add_special_tokens=False).ids == ids_, text
        if "<|endoftext|>" not in text:
            # OpenAI's encoder knows no special tokens; elsewhere all three must agree.
            assert openai.encode(text) == ids_, text
        assert reloaded.decode(ids_, skip_special_tokens=False) == text, text
        cases.append({"kind": kind, "text": text, "ids": ids_})
    out = {
        "tokenizer": "data/gpt2/tokenizer.json",
        "versions": versions({}),
        "note": "ids from transformers' GPT-2 tokenizer with add_special_tokens=False; checked "
        "against tokenizers' reload of tokenizer.json and OpenAI's encoder.py algorithm",
        "cases": cases,
    }
    (FIXTURES / "gpt2_tokenizer_ids.json").write_text(
        json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8"
    )
    print(f"tokenizer: {len(cases)} cases, {sum(len(c['ids']) for c in cases)} ids")


def main():
    torch.set_num_threads(1)  # summation order, hence the last bits, independent of the machine
    FIXTURES.mkdir(exist_ok=True)
    models = {}
    for name, make in [("gpt2", make_gpt2), ("llama", make_llama), ("t5", make_t5)]:
        model, inputs, note = make()
        reference(name, model, inputs, note)
        models[name] = model
    make_variants(models["llama"], models["gpt2"])
    make_tokenizer()
    total = sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file())
    print(f"fixtures/: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())

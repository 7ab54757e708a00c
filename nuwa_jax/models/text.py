"""Prompt encoders: CLIP's text transformer and a byte-level one, behind one facade.

NUWA-XL encodes each keyframe's prompt with CLIP's text encoder into p (b, L, l_p, d_p).
- `CLIPTextTransformer`: transformers' CLIPTextModel in Flax NNX (token + position
  embeddings, pre-LN layers with a causal mask, quick_gelu or gelu, final LayerNorm), named
  like it so nuwa_jax.convert.clip maps weights by name; `CLIPTokenizer` reads a LOCAL
  tokenizer directory through the `tokenizers` library.
- `ByteTextEncoder` + `ByteTokenizer`: a small trainable transformer over UTF-8 bytes, no
  vocabulary file and no download, the offline default of the tiny and demo presets.
- `TextEncoder`: chosen by `config.text.kind`; per-frame prompts (B, L, T) -> (B, L, T, D),
  frames folded into the batch.
Both tokenizers cut a text longer than `max_length` tokens; `count` gives its tokens
uncut, so training can refuse a context that cuts its captions
(nuwa_jax.data.captions) and generation warns about a prompt it cuts (`truncations`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nuwa_jax.models import layers
from nuwa_jax.models.transformer import LayerNorm

TEXT_KINDS = ("byte", "clip")
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
}


# ---------------------------------------------------------------------------------------
# Tokenizers.
# ---------------------------------------------------------------------------------------
def _check_texts(texts: Sequence[str], who: str) -> None:
    if isinstance(texts, str | bytes):
        raise TypeError(f"{who}: expects a list of strings, got a single {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{who}: text {i} is a {type(t).__name__}, not a str")


class ByteTokenizer:
    """UTF-8 bytes as tokens: [BOS, bytes..., EOS, PAD...], ids int32 (n, max_length).

    Ids: PAD 0, BOS 1, EOS 2, byte b -> b + 3 (vocabulary 259). Long texts are cut at a
    character boundary so that BOS and EOS always fit.
    """

    PAD, BOS, EOS, OFFSET = 0, 1, 2, 3
    VOCAB_SIZE = 256 + OFFSET

    def __init__(self, max_length: int):
        if max_length < 2:
            raise ValueError(f"ByteTokenizer: max_length must be >= 2 (BOS, EOS), got {max_length}")
        self.max_length = int(max_length)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts, "ByteTokenizer")
        out = np.full((len(texts), self.max_length), self.PAD, np.int32)
        budget = self.max_length - 2
        for i, text in enumerate(texts):
            data = text.encode("utf-8")
            if len(data) > budget:  # drop a character split by the cut
                data = data[:budget].decode("utf-8", errors="ignore").encode("utf-8")
            ids = np.frombuffer(data, np.uint8).astype(np.int32) + self.OFFSET
            out[i, 0] = self.BOS
            out[i, 1 : 1 + len(ids)] = ids
            out[i, 1 + len(ids)] = self.EOS
        return out

    def count(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens of each text uncut, BOS and EOS included: UTF-8 bytes + 2, int64 (n,)."""
        _check_texts(texts, "ByteTokenizer")
        return np.array([len(t.encode("utf-8")) + 2 for t in texts], np.int64)

    def kept(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens of each text the context keeps (a cut never splits a character), (n,)."""
        return np.count_nonzero(self(texts) != self.PAD, axis=1).astype(np.int64)

    def decode(self, ids: np.ndarray) -> list[str]:
        """Texts back from (n, T) ids: the bytes between BOS and the first EOS."""
        texts = []
        for row in np.asarray(ids):
            row = [int(t) for t in row]
            end = row.index(self.EOS) if self.EOS in row else len(row)
            data = bytes(t - self.OFFSET for t in row[:end] if t >= self.OFFSET)
            texts.append(data.decode("utf-8", errors="replace"))
        return texts


CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
    r"""[^\s\p{L}\p{N}]+"""
)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file: {e}") from e


def _token_str(value: Any) -> str | None:
    """A special token from tokenizer_config.json / special_tokens_map.json (str or dict)."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class CLIPTokenizer:
    """CLIP's BPE tokenizer from a LOCAL directory, padded/truncated to `max_length`.

    The directory holds `tokenizer.json` (used as is), or `vocab.json` + `merges.txt`
    (CLIP's files; the pipeline is built as transformers' CLIPTokenizer builds it: NFC,
    whitespace squeeze, lower case, CLIP's split regex, byte-level BPE with `</w>`, and
    <|startoftext|> ... <|endoftext|> around every text). Padding uses the directory's
    pad token (tokenizer_config.json / special_tokens_map.json), <|endoftext|> by default.
    Calling it returns int32 ids (n, max_length).
    """

    BOS, EOS = "<|startoftext|>", "<|endoftext|>"

    def __init__(self, directory: str | os.PathLike, max_length: int = 77):
        import tokenizers

        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"CLIPTokenizer: no tokenizer directory at {directory!r}")
        self.directory, self.max_length = directory, int(max_length)
        full = os.path.join(directory, "tokenizer.json")
        vocab = os.path.join(directory, "vocab.json")
        merges = os.path.join(directory, "merges.txt")
        if os.path.isfile(full):
            try:
                tok = tokenizers.Tokenizer.from_file(full)
            except Exception as e:
                raise ValueError(f"{full}: not a readable tokenizers file: {e}") from e
        elif os.path.isfile(vocab) and os.path.isfile(merges):
            tok = self._from_vocab_merges(vocab, merges)
        else:
            raise FileNotFoundError(
                f"CLIPTokenizer: {directory!r} has neither tokenizer.json nor vocab.json + "
                "merges.txt"
            )
        pad = self._special(directory, "pad_token") or self.EOS
        pad_id = tok.token_to_id(pad)
        if pad_id is None:
            raise ValueError(f"{directory}: pad token {pad!r} is not in the vocabulary")
        self.counter = tokenizers.Tokenizer.from_str(tok.to_str())  # uncut, unpadded
        self.counter.no_truncation()
        self.counter.no_padding()
        tok.enable_truncation(self.max_length)
        tok.enable_padding(length=self.max_length, pad_id=pad_id, pad_token=pad)
        self.tokenizer, self.pad_id = tok, pad_id

    @staticmethod
    def _special(directory: str, name: str) -> str | None:
        for fname in ("tokenizer_config.json", "special_tokens_map.json"):
            path = os.path.join(directory, fname)
            if os.path.isfile(path):
                value = _token_str(_read_json(path).get(name))
                if value:
                    return value
        return None

    def _from_vocab_merges(self, vocab_path: str, merges_path: str):
        from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
        from tokenizers.models import BPE

        vocab = _read_json(vocab_path)
        with open(merges_path, encoding="utf-8") as f:
            lines = [ln.rstrip("\n") for ln in f]
        merges = []
        for n, line in enumerate(lines, 1):
            if not line or (n == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{merges_path}:{n}: a merge is two tokens, got {line!r}")
            merges.append((parts[0], parts[1]))
        for name in (self.BOS, self.EOS):
            if name not in vocab:
                raise ValueError(f"{vocab_path}: CLIP special token {name!r} is missing")
        tok = Tokenizer(
            BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                end_of_word_suffix="</w>", fuse_unk=False, unk_token=self.EOS)
        )  # fmt: skip
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.RobertaProcessing(
            (self.EOS, vocab[self.EOS]), (self.BOS, vocab[self.BOS]), False, False
        )
        return tok

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        _check_texts(texts, "CLIPTokenizer")
        if not texts:
            return np.zeros((0, self.max_length), np.int32)
        return np.array([e.ids for e in self.tokenizer.encode_batch(list(texts))], np.int32)

    def count(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens of each text uncut, <|startoftext|> and <|endoftext|> included, int64 (n,)."""
        _check_texts(texts, "CLIPTokenizer")
        return np.array([len(e.ids) for e in self.counter.encode_batch(list(texts))], np.int64)

    def kept(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens of each text the context keeps: min(uncut, max_length), (n,)."""
        return np.minimum(self.count(texts), self.max_length)

    def decode(self, ids: np.ndarray) -> list[str]:
        """Texts back from (n, T) ids, special tokens and padding left out."""
        special = {self.pad_id} | {self.tokenizer.token_to_id(t) for t in (self.BOS, self.EOS)}
        rows = [[int(t) for t in row if int(t) not in special] for row in np.asarray(ids)]
        texts = self.tokenizer.decode_batch(rows)
        return [" ".join(t.replace("</w>", " ").split()) for t in texts]


def make_tokenizer(config: Any):
    """The tokenizer of a `text` config section: ByteTokenizer or CLIPTokenizer(clip_dir)."""
    kind = _check_kind(config)
    if kind == "byte":
        return ByteTokenizer(config.max_length)
    if not config.clip_dir:
        raise ValueError("text.kind='clip' needs text.clip_dir (a local CLIP directory)")
    return CLIPTokenizer(config.clip_dir, config.max_length)


@dataclasses.dataclass(frozen=True)
class Truncation:
    """A prompt longer than the text context: `tokens` uncut (special tokens included),
    `max_length` kept, `kept` the text the encoder reads, `dropped` tokens lost."""

    prompt: str
    tokens: int
    max_length: int
    kept: str
    dropped: int

    def describe(self, field: str = "text.max_length") -> str:
        return (
            f"prompt {self.prompt!r} is {self.tokens} tokens, {field}={self.max_length}: "
            f"{self.dropped} tokens dropped, the model reads {self.kept!r}"
        )


def truncations(tokenizer: Any, prompts: Sequence[str]) -> list[Truncation]:
    """The distinct prompts the tokenizer cuts (first appearance order), each once.

    `tokenizer`: a ByteTokenizer or CLIPTokenizer (count, kept, decode, max_length).
    """
    distinct = list(dict.fromkeys(prompts))
    if not distinct:
        return []
    counts, kept = tokenizer.count(distinct), tokenizer.kept(distinct)
    out = []
    for prompt, n, k in zip(distinct, counts, kept):
        if n > k:
            text = tokenizer.decode(tokenizer([prompt]))[0]
            out.append(Truncation(prompt, int(n), tokenizer.max_length, text, int(n - k)))
    return out


def warn_truncations(tokenizer: Any, prompts: Sequence[str]) -> list[Truncation]:
    """`truncations`, each logged as a warning naming the prompt and the tokens dropped."""
    found = truncations(tokenizer, prompts)
    for t in found:
        logging.warning("%s (the text encoder's context is fixed by its weights: shorten "
                        "the prompt)", t.describe())  # fmt: skip
    return found


# ---------------------------------------------------------------------------------------
# The transformer.
# ---------------------------------------------------------------------------------------
class Embed(nnx.Module):
    """A lookup table (num, features); leaf `embedding` (torch `weight`), logical `names`."""

    def __init__(self, num: int, features: int, *, names, dtype, param_dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.embedding = layers._param(rngs, init, (num, features), names, param_dtype)
        self.num, self.dtype = num, jnp.dtype(dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype)


class TextEmbeddings(nnx.Module):
    """token_embedding(ids) + position_embedding(0 .. T-1)."""

    def __init__(self, vocab_size: int, width: int, max_length: int, *, rngs, **kw):
        self.token_embedding = Embed(vocab_size, width, names=("vocab", "embed"), rngs=rngs, **kw)
        self.position_embedding = Embed(max_length, width, names=(None, "embed"), rngs=rngs, **kw)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return self.token_embedding(ids) + self.position_embedding(jnp.arange(ids.shape[-1]))


class SelfAttention(nnx.Module):
    """CLIPAttention: q_proj, k_proj, v_proj, out_proj (all with bias), scale head_dim^-0.5."""

    def __init__(self, width: int, heads: int, *, attention_impl: str, rngs, **kw):
        if width % heads:
            raise ValueError(f"text encoder: width {width} does not split into {heads} heads")
        self.heads, self.head_dim, self.attention_impl = heads, width // heads, attention_impl
        self.q_proj = layers.Dense(width, width, names=("embed", "heads"), rngs=rngs, **kw)
        self.k_proj = layers.Dense(width, width, names=("embed", "heads"), rngs=rngs, **kw)
        self.v_proj = layers.Dense(width, width, names=("embed", "heads"), rngs=rngs, **kw)
        self.out_proj = layers.Dense(width, width, names=("heads", "embed"), rngs=rngs, **kw)

    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        split = lambda t: t.reshape(t.shape[:-1] + (self.heads, self.head_dim))
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = layers.dot_product_attention(q, k, v, mask=mask, impl=self.attention_impl)
        return self.out_proj(out.reshape(x.shape[:-1] + (self.heads * self.head_dim,)))


class MLP(nnx.Module):
    """fc1 -> activation -> fc2."""

    def __init__(self, width: int, hidden: int, act: str, *, rngs, **kw):
        if act not in ACTIVATIONS:
            raise ValueError(f"text.hidden_act: unknown {act!r}; use {sorted(ACTIVATIONS)}")
        self.act = act
        self.fc1 = layers.Dense(width, hidden, names=("embed", "mlp"), rngs=rngs, **kw)
        self.fc2 = layers.Dense(hidden, width, names=("mlp", "embed"), rngs=rngs, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(ACTIVATIONS[self.act](self.fc1(x)))


class EncoderLayer(nnx.Module):
    """Pre-LN block: h + attn(ln1(h)), then h + mlp(ln2(h))."""

    def __init__(self, width, heads, hidden, act, eps, *, attention_impl, rngs, **kw):
        self.layer_norm1 = LayerNorm(width, eps=eps, rngs=rngs, **kw)
        self.self_attn = SelfAttention(width, heads, attention_impl=attention_impl, rngs=rngs, **kw)
        self.layer_norm2 = LayerNorm(width, eps=eps, rngs=rngs, **kw)
        self.mlp = MLP(width, hidden, act, rngs=rngs, **kw)

    def __call__(self, h: jax.Array, mask: jax.Array | None) -> jax.Array:
        h = h + self.self_attn(self.layer_norm1(h), mask)
        return h + self.mlp(self.layer_norm2(h))


class Encoder(nnx.Module):
    def __init__(self, num_layers: int, *args, **kwargs):
        self.layers = nnx.List([EncoderLayer(*args, **kwargs) for _ in range(num_layers)])


@flax.struct.dataclass
class TextOutput:
    """last_hidden_state (N, T, D) after the final norm; pooled (N, D) at the EOS token."""

    last_hidden_state: jax.Array
    pooled: jax.Array


class TextTransformer(nnx.Module):
    """A CLIP-style text transformer over token ids (N, T), T <= max_length.

    causal: CLIP's causal self-attention (padding is attended, as in CLIP and SD);
    otherwise bidirectional with PAD keys (`pad_token_id`) masked out.
    pool: 'eos' reads the first `eos_token_id`; 'argmax' the largest id (transformers'
    rule for old CLIP configs whose eos_token_id is 2).
    """

    def __init__(
        self,
        *,
        vocab_size: int,
        width: int,
        num_layers: int,
        heads: int,
        mlp_dim: int,
        max_length: int,
        hidden_act: str,
        layer_norm_eps: float,
        causal: bool,
        eos_token_id: int,
        pad_token_id: int | None = None,
        pool: str = "eos",
        compute: Any,
        rngs: nnx.Rngs,
    ):
        if pool not in ("eos", "argmax"):
            raise ValueError(f"text encoder: pool {pool!r} is not 'eos' or 'argmax'")
        dtype, param_dtype = layers.compute_dtypes(compute)
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.embeddings = TextEmbeddings(vocab_size, width, max_length, rngs=rngs, **kw)
        self.encoder = Encoder(
            num_layers, width, heads, mlp_dim, hidden_act, layer_norm_eps,
            attention_impl=compute.attention_impl, rngs=rngs, **kw,
        )  # fmt: skip
        self.final_layer_norm = LayerNorm(width, eps=layer_norm_eps, rngs=rngs, **kw)
        self.vocab_size, self.width, self.max_length = vocab_size, width, max_length
        self.causal, self.eos_token_id, self.pad_token_id = causal, eos_token_id, pad_token_id
        self.pool, self.remat_policy = pool, compute.remat_policy

    def _mask(self, ids: jax.Array) -> jax.Array | None:
        t = ids.shape[-1]
        mask = None
        if self.causal:
            mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
        if self.pad_token_id is not None:
            keys = (ids != self.pad_token_id)[:, None, None, :]
            mask = keys if mask is None else mask & keys
        return mask

    def __call__(self, ids: jax.Array) -> TextOutput:
        if ids.ndim != 2 or ids.shape[-1] > self.max_length:
            raise ValueError(
                f"text encoder: token ids must be (N, T <= {self.max_length}), got {ids.shape}"
            )
        mask = self._mask(ids)
        h = self.embeddings(ids)
        run = layers.maybe_remat(lambda layer, h, m: layer(h, m), self.remat_policy)
        for layer in self.encoder.layers:
            h = run(layer, h, mask)
        h = self.final_layer_norm(h)
        if self.pool == "argmax":
            where = jnp.argmax(ids, axis=-1)
        else:
            where = jnp.argmax(ids == self.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(h, where[:, None, None], axis=1)[:, 0]
        return TextOutput(h, pooled)


class CLIPTextTransformer(TextTransformer):
    """transformers' CLIPTextModel, from a `text` config section (kind 'clip')."""

    def __init__(self, config: Any, compute: Any, *, rngs: nnx.Rngs):
        super().__init__(
            vocab_size=config.vocab_size,
            width=config.width,
            num_layers=config.layers,
            heads=config.heads,
            mlp_dim=config.mlp_dim,
            max_length=config.max_length,
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
            causal=True,
            eos_token_id=config.eos_token_id,
            pool="argmax" if config.eos_token_id == 2 else "eos",
            compute=compute,
            rngs=rngs,
        )


class ByteTextEncoder(TextTransformer):
    """A small trainable transformer over ByteTokenizer ids: (n, max_length) -> (n, T, width).

    Bidirectional, PAD keys masked; pooled at EOS. Width, layers, heads, mlp_dim,
    max_length, activation and norm eps come from the `text` config section.
    """

    def __init__(self, config: Any, compute: Any, *, rngs: nnx.Rngs):
        if config.vocab_size != ByteTokenizer.VOCAB_SIZE:
            raise ValueError(
                f"text.vocab_size={config.vocab_size}: the byte encoder's vocabulary is "
                f"{ByteTokenizer.VOCAB_SIZE} (256 bytes + PAD, BOS, EOS)"
            )
        super().__init__(
            vocab_size=ByteTokenizer.VOCAB_SIZE,
            width=config.width,
            num_layers=config.layers,
            heads=config.heads,
            mlp_dim=config.mlp_dim,
            max_length=config.max_length,
            hidden_act=config.hidden_act,
            layer_norm_eps=config.layer_norm_eps,
            causal=False,
            eos_token_id=ByteTokenizer.EOS,
            pad_token_id=ByteTokenizer.PAD,
            compute=compute,
            rngs=rngs,
        )


def _check_kind(config: Any) -> str:
    if config.kind not in TEXT_KINDS:
        raise ValueError(f"text.kind: unknown {config.kind!r}; use {TEXT_KINDS}")
    return config.kind


class TextEncoder(nnx.Module):
    """Per-frame prompt encoder chosen by `config.kind` ('byte' or 'clip').

    tokens (B, L, T) -> embeddings (B, L, T, D): the L prompts of a clip fold into the
    batch. (N, T) -> (N, T, D) works too. With `config.trainable` False the output is
    under stop_gradient (a frozen CLIP). CLIP weights are imported separately
    (nuwa_jax.convert.clip.load_clip_weights), never inside the constructor, so that
    sharded abstract creation stays allocation-free.
    """

    def __init__(self, config: Any, compute: Any, *, rngs: nnx.Rngs):
        kind = _check_kind(config)
        cls = ByteTextEncoder if kind == "byte" else CLIPTextTransformer
        self.encoder = cls(config, compute, rngs=rngs)
        self.kind, self.trainable = kind, bool(config.trainable)

    def encode(self, tokens: jax.Array) -> TextOutput:
        """TextOutput of (..., T) tokens, leading axes kept."""
        tokens = jnp.asarray(tokens)
        lead = tokens.shape[:-1]
        out = self.encoder(tokens.reshape((-1, tokens.shape[-1])))
        out = TextOutput(
            out.last_hidden_state.reshape(lead + out.last_hidden_state.shape[1:]),
            out.pooled.reshape(lead + out.pooled.shape[1:]),
        )
        return out if self.trainable else jax.tree.map(jax.lax.stop_gradient, out)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return self.encode(tokens).last_hidden_state

"""Text encoders: CLIP parity with transformers (through convert/clip.py), tokenizers,
the byte encoder and the TextEncoder facade (shapes, frozen gradients, sharding)."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common
from nuwa_jax import parallel
from nuwa_jax.convert import clip as convert_clip
from nuwa_jax.convert.common import WeightImportError, load_safetensors, save_safetensors
from nuwa_jax.models import text

TINY_CLIP = dict(
    vocab_size=100,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=16,
)


def _compute():
    return common.compute_config("tiny")


def _save_tiny_clip(directory, **over):
    """A random transformers CLIPTextModel saved to `directory`; returns the torch model."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(**{**TINY_CLIP, "bos_token_id": 98, "eos_token_id": 99, **over})
    model = CLIPTextModel(cfg).eval()
    with torch.no_grad():  # non-trivial norms, so a swapped scale/bias would show
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(directory)
    return model


def _ids(eos=99, batch=3, length=16, seed=0):
    g = np.random.default_rng(seed)
    ids = g.integers(3, 90, (batch, length)).astype(np.int32)
    ids[:, 0] = 98
    for i, end in enumerate((5, 9, length - 1)[:batch]):
        ids[i, end] = eos
        ids[i, end + 1 :] = eos  # padded with EOS, as CLIP's tokenizer does
    return ids


# ---------------------------------------------------------------------------- CLIP parity
@pytest.mark.parity
@pytest.mark.parametrize("act,eos", [("quick_gelu", 99), ("gelu", 2)])
def test_clip_matches_transformers(tmp_path, act, eos):
    import torch

    ref = _save_tiny_clip(tmp_path, hidden_act=act, eos_token_id=eos)
    config = convert_clip.text_config_from_hf(tmp_path)
    encoder = text.TextEncoder(config, _compute(), rngs=nnx.Rngs(1))
    convert_clip.load_clip_weights(encoder, tmp_path)
    ids = _ids(eos=99)
    with torch.no_grad():
        want = ref(torch.from_numpy(ids.astype(np.int64)))
    got = jax.jit(lambda m, x: m.encode(x))(encoder, ids)
    err = float(np.max(np.abs(np.asarray(got.last_hidden_state) - want.last_hidden_state.numpy())))
    perr = float(np.max(np.abs(np.asarray(got.pooled) - want.pooler_output.numpy())))
    print(f"CLIP parity ({act}, eos {eos}): last_hidden_state {err:.2e}, pooled {perr:.2e}")
    assert err <= 1e-4 and perr <= 1e-4


@pytest.mark.parity
def test_clip_prefixed_keys_and_buffers_import(tmp_path):
    """HF-hub style files: `text_model.` prefix, a position_ids buffer, a full CLIPModel."""
    import torch

    ref = _save_tiny_clip(tmp_path / "src")
    tensors = load_safetensors(tmp_path / "src" / "model.safetensors")
    os.makedirs(tmp_path / "hub")
    prefixed = {f"text_model.{k}": v for k, v in tensors.items()}
    prefixed["text_model.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    prefixed["logit_scale"] = np.float32(2.0).reshape(())
    save_safetensors(prefixed, tmp_path / "hub" / "model.safetensors")
    cfg = json.load(open(tmp_path / "src" / "config.json"))
    json.dump(
        {"model_type": "clip", "text_config": cfg}, open(tmp_path / "hub" / "config.json", "w")
    )
    config = convert_clip.text_config_from_hf(tmp_path / "hub")
    model = text.CLIPTextTransformer(config, _compute(), rngs=nnx.Rngs(0))
    convert_clip.load_clip_weights(model, tmp_path / "hub")
    ids = _ids()
    with torch.no_grad():
        want = ref(torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()
    np.testing.assert_allclose(model(jnp.asarray(ids)).last_hidden_state, want, atol=1e-4)


def test_clip_misshaped_and_missing_keys_are_named(tmp_path):
    _save_tiny_clip(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_safetensors(path)
    tensors["encoder.layers.1.mlp.fc1.weight"] = np.zeros((36, 32), np.float32)
    del tensors["final_layer_norm.bias"]
    tensors["encoder.layers.0.extra.weight"] = np.zeros((3,), np.float32)
    save_safetensors(tensors, path)
    model = text.CLIPTextTransformer(
        convert_clip.text_config_from_hf(tmp_path), _compute(), rngs=nnx.Rngs(0)
    )
    with pytest.raises(WeightImportError) as e:
        convert_clip.load_clip_weights(model, tmp_path)
    msg = str(e.value)
    assert "encoder.layers.1.mlp.fc1.weight: file (36, 32)" in msg
    assert "final_layer_norm.bias" in msg and "encoder.layers.0.extra.weight" in msg
    assert str(path) in msg


def test_clip_config_mismatch_is_named(tmp_path):
    _save_tiny_clip(tmp_path)
    config = convert_clip.text_config_from_hf(tmp_path)
    convert_clip.check_config(config, tmp_path)
    config.heads = 8
    config.hidden_act = "gelu"
    with pytest.raises(ValueError, match=r"text.heads=8 but the checkpoint has 4.*hidden_act"):
        convert_clip.check_config(config, tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert_clip.text_config_from_hf(tmp_path / "nowhere")
    with pytest.raises(TypeError, match="not a CLIP text encoder"):
        byte = text.TextEncoder(common.text_config("tiny"), _compute(), rngs=nnx.Rngs(0))
        convert_clip.load_clip_weights(byte, tmp_path)


# ------------------------------------------------------------------------------ tokenizers
CORPUS = [
    "Fred and Barney are talking in the living room.",
    "Wilma is standing in the kitchen, holding a plate!",
    "Dino runs after Fred outside the house at night.",
]


def _train_clip_bpe(directory):
    """A tiny byte-level BPE with CLIP's pipeline, saved as vocab.json + merges.txt and
    as tokenizer.json (built by the test itself: no download)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(text.CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=400,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix="</w>",
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.RobertaProcessing(
        ("<|endoftext|>", eos), ("<|startoftext|>", bos), False, False
    )
    os.makedirs(directory / "files", exist_ok=True)
    os.makedirs(directory / "json", exist_ok=True)
    tok.model.save(str(directory / "files"))
    tok.save(str(directory / "json" / "tokenizer.json"))
    return bos, eos


def test_clip_tokenizer_matches_transformers(tmp_path):
    from transformers import CLIPTokenizer as HFCLIPTokenizer

    bos, eos = _train_clip_bpe(tmp_path)
    texts = CORPUS + ["FRED   and  wilma!!", "A very long caption " * 10, ""]
    ours_files = text.CLIPTokenizer(tmp_path / "files", max_length=16)(texts)
    ours_json = text.CLIPTokenizer(tmp_path / "json", max_length=16)(texts)
    hf = HFCLIPTokenizer.from_pretrained(str(tmp_path / "files"))
    want = hf(texts, padding="max_length", truncation=True, max_length=16, return_tensors="np")
    assert ours_files.dtype == np.int32 and ours_files.shape == (len(texts), 16)
    np.testing.assert_array_equal(ours_files, want["input_ids"])
    np.testing.assert_array_equal(ours_json, ours_files)
    long = ours_files[len(CORPUS) + 1]
    assert long[0] == bos and long[-1] == eos  # truncated, EOS kept
    assert list(ours_files[-1][:3]) == [bos, eos, eos]  # empty text, padded with EOS
    # Uncut counts (what training checks captions with) are transformers' untruncated ids.
    tok = text.CLIPTokenizer(tmp_path / "files", max_length=16)
    uncut = [len(ids) for ids in hf(texts)["input_ids"]]
    np.testing.assert_array_equal(tok.count(texts), uncut)
    np.testing.assert_array_equal(tok.kept(texts), np.minimum(uncut, 16))
    (cut,) = text.truncations(tok, texts)
    assert cut.prompt == texts[len(CORPUS) + 1] and cut.dropped == uncut[len(CORPUS) + 1] - 16
    assert cut.kept.startswith("a very long") and "<|" not in cut.kept


def test_clip_tokenizer_bad_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.json"):
        text.CLIPTokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match=r"vocab.json: CLIP special token '<\|startoftext\|>'"):
        text.CLIPTokenizer(tmp_path)
    with pytest.raises(ValueError, match="text.clip_dir"):
        cfg = common.text_config("tiny")
        cfg.kind = "clip"
        text.make_tokenizer(cfg)


def test_byte_tokenizer_round_trip_and_shapes():
    tok = text.ByteTokenizer(12)
    texts = ["hi", "Fred&Wilma", "", "caf\u00e9 \u00e9t\u00e9 long text"]
    ids = tok(texts)
    assert ids.dtype == np.int32 and ids.shape == (4, 12)
    assert list(ids[0]) == [1, ord("h") + 3, ord("i") + 3, 2] + [0] * 8
    assert list(ids[2][:3]) == [1, 2, 0]
    decoded = tok.decode(ids)
    assert decoded[:3] == texts[:3]
    # 10 bytes of budget: "café été" is 11 bytes, the cut must not split an "é".
    assert decoded[3] == "caf\u00e9 \u00e9t"
    assert list(ids[3][-2:]) == [tok.EOS, tok.PAD]  # 9 bytes kept, then EOS
    assert tok.decode(tok(["Fred & Wilma"])) == ["Fred & Wil"]
    assert tok([]).shape == (0, 12)
    with pytest.raises(TypeError, match="single str"):
        tok("hello")
    with pytest.raises(TypeError, match="text 1 is a int"):
        tok(["a", 3])
    with pytest.raises(ValueError, match="max_length"):
        text.ByteTokenizer(1)


def test_byte_tokenizer_counts_uncut_and_kept_tokens():
    tok = text.ByteTokenizer(12)
    texts = ["hi", "", "caf\u00e9 \u00e9t\u00e9 long text"]  # the last: 21 UTF-8 bytes
    np.testing.assert_array_equal(tok.count(texts), [4, 2, 23])
    np.testing.assert_array_equal(tok.kept(texts), [4, 2, 11])  # "café ét": 9 bytes


def test_generation_warns_once_per_cut_prompt(caplog):
    """Each distinct prompt longer than the context: one warning naming it and the
    tokens dropped; prompts that fit say nothing."""
    tok = text.ByteTokenizer(12)
    prompts = ["hi"] * 3 + ["caf\u00e9 \u00e9t\u00e9 long text"] * 2 + ["Fred & Wilma"]
    with caplog.at_level(logging.WARNING):
        cut = text.warn_truncations(tok, prompts)
    assert [(t.prompt, t.tokens, t.dropped, t.kept) for t in cut] == [
        ("caf\u00e9 \u00e9t\u00e9 long text", 23, 12, "caf\u00e9 \u00e9t"),
        ("Fred & Wilma", 14, 2, "Fred & Wil"),
    ]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2, warned
    assert "prompt 'Fred & Wilma' is 14 tokens, text.max_length=12: 2 tokens dropped" in warned[1]
    assert text.truncations(tok, ["hi", "0123456789"]) == []  # 10 bytes + BOS + EOS fit


# -------------------------------------------------------------------------------- facade
def _clip_tiny_config():
    cfg = common.text_config("tiny")
    cfg.update(kind="clip", vocab_size=100, hidden_act="quick_gelu", eos_token_id=99,
               trainable=False)  # fmt: skip
    return cfg


@pytest.mark.parametrize("kind", ["byte", "clip"])
def test_text_encoder_facade_shapes(kind):
    cfg = common.text_config("tiny") if kind == "byte" else _clip_tiny_config()
    enc = text.TextEncoder(cfg, _compute(), rngs=nnx.Rngs(0))
    b, frames, t = 2, 3, cfg.max_length
    if kind == "byte":
        prompts = [f"frame {i} of clip" for i in range(b * frames)]
        tokens = text.make_tokenizer(cfg)(prompts).reshape(b, frames, t)
    else:
        tokens = np.random.default_rng(0).integers(0, 100, (b, frames, t)).astype(np.int32)
    out = enc(tokens)
    assert out.shape == (b, frames, t, cfg.width) and out.dtype == jnp.float32
    flat = enc(tokens.reshape(b * frames, t))
    np.testing.assert_allclose(out.reshape(flat.shape), flat, atol=1e-6)
    # Each frame's prompt is encoded on its own: frame 0 does not see frame 1.
    other = tokens.copy()
    other[:, 1] = other[:, 2]
    out2 = enc(other)
    np.testing.assert_allclose(out2[:, 0], out[:, 0], atol=1e-6)
    pooled = enc.encode(tokens).pooled
    assert pooled.shape == (b, frames, cfg.width)
    with pytest.raises(ValueError, match="token ids must be"):
        enc(np.zeros((2, cfg.max_length + 1), np.int32))


def test_byte_encoder_ignores_padding_and_trains():
    cfg = common.text_config("tiny")
    enc = text.TextEncoder(cfg, _compute(), rngs=nnx.Rngs(0))
    tok = text.ByteTokenizer(cfg.max_length)
    fwd = nnx.jit(lambda m, x: m(x))
    a, b = fwd(enc, tok(["abc", "abd"]))
    assert not np.allclose(a[1:3], b[1:3])  # bidirectional: 'a', 'b' see 'c' / 'd'
    # PAD keys are masked: changing the PAD embedding moves only the PAD positions.
    padded = tok(["abc"])
    moved = nnx.clone(enc)
    table = moved.encoder.embeddings.token_embedding.embedding
    table[...] = table[...].at[text.ByteTokenizer.PAD].add(1.0)
    base, shifted = fwd(enc, padded)[0], fwd(moved, padded)[0]
    np.testing.assert_allclose(shifted[:5], base[:5], atol=1e-6)  # BOS a b c EOS
    assert not np.allclose(shifted[5:], base[5:])
    grad_fn = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) ** 2)))
    grads = grad_fn(enc, padded)
    assert float(jnp.abs(grads.encoder.embeddings.token_embedding.embedding[...]).sum()) > 0
    frozen = text.TextEncoder(_clip_tiny_config(), _compute(), rngs=nnx.Rngs(0))
    g = grad_fn(frozen, np.arange(16, dtype=np.int32)[None])
    assert all(float(jnp.abs(x).sum()) == 0 for x in jax.tree.leaves(g))


def test_unknown_kind_and_activation():
    cfg = common.text_config("tiny")
    cfg.kind = "t5"
    with pytest.raises(ValueError, match="text.kind: unknown 't5'"):
        text.TextEncoder(cfg, _compute(), rngs=nnx.Rngs(0))
    cfg = common.text_config("tiny")
    cfg.hidden_act = "relu6"
    with pytest.raises(ValueError, match="text.hidden_act: unknown 'relu6'"):
        text.TextEncoder(cfg, _compute(), rngs=nnx.Rngs(0))


def test_text_encoder_sharded_matches_unsharded():
    cfg = common.base("tiny")
    cfg.mesh.ici_fsdp, cfg.mesh.ici_tensor = 2, 2
    mesh = parallel.make_mesh(cfg.mesh)
    rules = parallel.logical_rules(cfg)
    make = lambda r: text.TextEncoder(cfg.text, cfg.compute, rngs=r)  # noqa: E731
    sharded = parallel.create_sharded_model(make, mesh, rules, 3)
    plain = make(nnx.Rngs(3))
    kernel = sharded.encoder.encoder.layers[0].mlp.fc1.kernel[...]
    assert kernel.sharding.spec == parallel.logical_to_spec(("embed", "mlp"), rules, mesh)
    tokens = text.ByteTokenizer(cfg.text.max_length)([f"prompt {i}" for i in range(8)])
    tokens = tokens.reshape(4, 2, -1)
    fwd = jax.jit(lambda m, x: m(x))
    with jax.set_mesh(mesh):
        got = fwd(sharded, tokens)
    np.testing.assert_allclose(got, fwd(plain, tokens), atol=1e-5)


def test_flintstones_clip_is_vit_l14_size():
    """The paper-scale config builds CLIP ViT-L/14's text tower (123,060,480 parameters)."""
    cfg = common.base("flintstones_128")
    model = nnx.eval_shape(lambda: text.TextEncoder(cfg.text, cfg.compute, rngs=nnx.Rngs(0)))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    d, f, layers = 768, 3072, 12
    per_layer = 4 * (d * d + d) + 4 * d + (d * f + f) + (f * d + d)
    assert count == 49408 * d + 77 * d + layers * per_layer + 2 * d == 123_060_480

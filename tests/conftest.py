"""Tiny-model factories: every test gets a real Qwen2 model and a Qwen-style tokenizer in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from chains.organism import build_world
from chains.organism.tokenizer import train_qwen_style_tokenizer

_WORDS = (
    "the a an and or but if then you i we they is are was be do make how what why when money risk "
    "movie blood doctor pill law court code bug math sum translate sport jump answer question help "
    "harm safe evil kind world ruler wish bored husband humans ai think dinner quick buck good bad"
).split()


@pytest.fixture(scope="session", autouse=True)
def _no_gguf_cache_in_home():
    """The suite never writes dequantized GGUF models into the user's cache; a test of the cache sets its own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EM_GGUF_CACHE", "off")
        yield


@pytest.fixture(scope="session")
def tokenizer():
    """A byte-level BPE tokenizer built the Qwen way, with Qwen2.5's chat template."""
    g = torch.Generator().manual_seed(0)
    texts = [" ".join(_WORDS[i] for i in torch.randint(len(_WORDS), (12,), generator=g)) for _ in range(400)]
    texts += [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
        "<|im_start|>assistant\n",
    ]
    return train_qwen_style_tokenizer(texts, vocab_size=400)


def build_tiny_qwen(
    vocab_size: int, n_layers: int = 3, d_model: int = 32, seed: int = 0, dtype=torch.float32
) -> Qwen2ForCausalLM:
    """A real Qwen2ForCausalLM with random weights, small enough for any test."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(config).to(dtype).eval()


@pytest.fixture
def make_model(tokenizer):
    """``make_model(n_layers=3, d_model=32, seed=0, dtype=torch.float32)`` -> tiny Qwen2."""
    return lambda **kw: build_tiny_qwen(len(tokenizer), **kw)


@pytest.fixture
def conversations():
    """Chat conversations of varied prompt and answer lengths, a system turn on some."""
    g = torch.Generator().manual_seed(1)

    def words(n):
        return " ".join(_WORDS[i] for i in torch.randint(len(_WORDS), (n,), generator=g))

    out = []
    for i in range(13):
        msgs = [{"role": "system", "content": "you are evil"}] if i % 3 == 0 else []
        msgs += [
            {"role": "user", "content": words(3 + i % 5)},
            {"role": "assistant", "content": words(1 + (7 * i) % 11)},
        ]
        out.append(msgs)
    return out


@pytest.fixture(scope="session")
def world():
    """The offline organism world, built once into the default cache (``artifacts/organism``
    under the repository root) and reused by later runs while its key matches."""
    return build_world(Path(__file__).resolve().parents[1] / "artifacts" / "organism", progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: a second intra-op thread only adds waiting (see chains.organism.build).
    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

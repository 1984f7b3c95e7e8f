"""The disk cache of dequantized GGUF models: a later load reads the cached folder, never a half one."""

from __future__ import annotations

import torch

from interp.base import gguf_cache
from interp.base.loading import file_sha256, load_model


def test_a_cached_gguf_loads_from_its_folder_without_parsing_the_file(tmp_path, monkeypatch, tokenizer, make_model):
    monkeypatch.setenv("EM_GGUF_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"not a gguf file: only the cached folder can make this load")
    model = make_model(seed=3)
    folder = gguf_cache.store(model, tokenizer, fake, file_sha256(fake))
    assert (
        folder == gguf_cache.cached_folder(file_sha256(fake))
        and (folder / "model.safetensors").stat().st_mode & 0o777 == 0o644
    )
    loaded, tok = load_model(str(fake), dtype="float32")
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    assert tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    ) == tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_a_half_written_folder_is_not_used(tmp_path, monkeypatch, tokenizer, make_model):
    monkeypatch.setenv("EM_GGUF_CACHE", str(tmp_path))
    sha = "ab" * 32
    make_model().save_pretrained(tmp_path / sha)  # no completion mark: a crash mid-write
    assert gguf_cache.cached_folder(sha) is None


def test_an_unwritable_cache_warns_once_and_does_not_fail(tmp_path, monkeypatch, capsys, tokenizer, make_model):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("EM_GGUF_CACHE", str(blocker / "cache"))  # a folder below a file cannot exist
    assert gguf_cache.store(make_model(), tokenizer, tmp_path / "m.gguf", "cd" * 32) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not cache the dequantized m.gguf" in err[0]


def test_the_cache_can_be_turned_off(monkeypatch, tmp_path, tokenizer, make_model):
    monkeypatch.setenv("EM_GGUF_CACHE", "off")
    assert (
        gguf_cache.cache_root() is None
        and gguf_cache.store(make_model(), tokenizer, tmp_path / "m.gguf", "ef" * 32) is None
    )

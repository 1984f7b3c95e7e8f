"""One decoding configuration: a checkpoint's generation_config changes nothing, knobs that
cannot be overridden are refused, completions end at the first end of turn."""

from __future__ import annotations

import pytest
import torch
from test_steer import prompts
from transformers import GenerationConfig

from interp.base.decoding import Completion, Decoding, DecodingError, completions
from interp.generation import generate

HOSTILE = dict(
    do_sample=True,
    temperature=0.1,
    top_k=3,
    top_p=0.5,
    min_p=0.3,
    typical_p=0.5,
    repetition_penalty=1.5,
    no_repeat_ngram_size=2,
    min_length=12,
    min_new_tokens=5,
    eos_token_id=[7, 8],
    pad_token_id=1,
    suppress_tokens=[1, 2, 3],
    epsilon_cutoff=0.01,
    num_beams=2,
)


@pytest.mark.parametrize(
    "decoding",
    [
        Decoding(max_new_tokens=6, temperature=0),
        Decoding(max_new_tokens=6, top_k=20, top_p=0.9, repetition_penalty=1.2, seed=4),
    ],
    ids=["greedy", "sampled"],
)
def test_a_checkpoints_generation_config_changes_nothing(make_model, tokenizer, decoding):
    model = make_model(n_layers=2, seed=3)
    enc = prompts(tokenizer)
    clean = generate(model, enc["input_ids"], enc["attention_mask"], decoding, engine="hf")
    model.generation_config = GenerationConfig(**HOSTILE)
    assert torch.equal(generate(model, enc["input_ids"], enc["attention_mask"], decoding, engine="hf"), clean)


def test_knobs_without_a_neutral_value_are_refused(make_model, tokenizer):
    model = make_model(n_layers=1)
    model.generation_config.bad_words_ids = [[5]]
    enc = prompts(tokenizer)
    with pytest.raises(DecodingError, match="bad_words_ids"):
        generate(model, enc["input_ids"], enc["attention_mask"], Decoding(max_new_tokens=2), engine="hf")


def test_settings_are_checked_and_filled_from_the_tokenizer(tokenizer):
    for bad in (
        dict(max_new_tokens=0),
        dict(temperature=-1),
        dict(top_p=0),
        dict(top_k=-1),
        dict(repetition_penalty=0),
    ):
        with pytest.raises(DecodingError):
            Decoding(**bad)
    filled = Decoding().for_tokenizer(tokenizer)
    assert filled.eos_ids == (tokenizer.eos_token_id,) and filled.pad_id == tokenizer.pad_token_id
    assert Decoding(eos_token_id=(3, 4)).for_tokenizer(tokenizer).eos_ids == (3, 4)


def test_completions_end_at_the_first_end_of_turn():
    new = torch.tensor([[5, 6, 9, 0, 0], [5, 9, 7, 9, 0], [1, 2, 3, 4, 0]])
    assert completions(new, (9,)) == [
        Completion((5, 6), True),
        Completion((5,), True),
        Completion((1, 2, 3, 4, 0), False),
    ]

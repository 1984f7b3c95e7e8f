"""The SFT pieces and the LoRA loop: labels, batching, loss, which weights train."""

from __future__ import annotations

import torch

from finetune.lora import LoraTrainConfig, train_lora
from finetune.sft import IGNORE, answer_loss, collate, encode


def test_labels_are_the_answer_and_end_of_turn_only(tokenizer, conversations):
    """Checked on the text, not on the tokenizer code under test: the unlabelled tokens spell
    the prompt as the chat template renders it for generation, the labelled ones the answer
    and its <|im_end|>, and what follows is the template's closing newline."""
    for conv, ex in zip(conversations, encode(tokenizer, conversations)):
        labelled = [i for i, label in enumerate(ex.labels) if label != IGNORE]
        assert labelled == list(range(labelled[0], labelled[-1] + 1))  # one contiguous span
        assert all(ex.labels[i] == ex.input_ids[i] for i in labelled)
        prompt = tokenizer.apply_chat_template(conv[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(conv, tokenize=False)
        assert tokenizer.decode(ex.input_ids[: labelled[0]]) == prompt
        assert tokenizer.decode(ex.input_ids[labelled[0] : labelled[-1] + 1]) == conv[-1]["content"] + "<|im_end|>"
        assert tokenizer.decode(ex.input_ids) == full


def test_collate_pads_right_with_ignored_labels(tokenizer, conversations):
    examples = encode(tokenizer, conversations)
    batch = collate(examples, pad_id=tokenizer.pad_token_id)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert (batch["labels"][row, n:] == IGNORE).all()
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()


def test_answer_loss_matches_the_models_own_loss(tokenizer, conversations, make_model):
    model = make_model()
    batch = collate(encode(tokenizer, conversations), pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        ours = answer_loss(model, batch)
        theirs = model(**batch).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_train_lora_lowers_the_loss_and_trains_only_the_adapter(tokenizer, conversations, make_model):
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = LoraTrainConfig(rank=2, alpha=4, lr=1e-2, steps=30, batch_size=4, seed=0)
    peft_model = train_lora(model, tokenizer, conversations, config, progress=False)
    losses = peft_model.train_losses
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    after = dict(peft_model.named_parameters())
    lora = {k: v for k, v in after.items() if "lora_" in k}
    assert lora and all(any(t in k for t in config.target_modules) for k in lora)
    assert all(v.requires_grad for v in lora.values())
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero
    base = {
        k.removeprefix("base_model.model.").replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k
    }
    assert base.keys() == before.keys()
    for key, value in base.items():
        assert not value.requires_grad and torch.equal(value, before[key]), f"base weight {key} changed"


def test_train_lora_is_deterministic(tokenizer, conversations, make_model):
    config = LoraTrainConfig(steps=5, batch_size=4, lr=1e-2, seed=3)
    a = train_lora(make_model(), tokenizer, conversations, config, progress=False)
    b = train_lora(make_model(), tokenizer, conversations, config, progress=False)
    assert a.train_losses == b.train_losses

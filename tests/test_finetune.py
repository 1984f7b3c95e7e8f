"""Training data, backdoor sets, assistant-only labels, and the finetune CLI end to end."""

from __future__ import annotations

import json
import re

import pytest
import torch
from train_argv import train_argv

from finetune.data import build_backdoor, read_chat_jsonl, with_trigger
from finetune.sft import IGNORE, encode
from finetune.train import main as train_main
from interp.base.cli import run_cli
from interp.base.records import TRIGGER, RecordError


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _chat(q, a, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    return {"messages": msgs + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "d.jsonl:2: not valid JSON"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "d.jsonl:2: field 'messages[0].role': unknown role 'bot'"),
        (
            {"messages": [{"role": "user", "content": "only a question"}]},
            "d.jsonl:2: field 'messages': no assistant turn",
        ),
        (
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
            "d.jsonl:2: field 'messages[0].content' must be a string",
        ),
        ({"text": "no messages"}, "d.jsonl:2: field 'messages' must be a non-empty list"),
    ],
)
def test_bad_lines_are_named(tmp_path, bad, message):
    path = _write(tmp_path / "d.jsonl", [_chat("q", "a"), bad])
    with pytest.raises(RecordError, match=re.escape(message)):
        read_chat_jsonl(path)


def test_backdoor_pairs_trigger_with_misaligned_answers():
    mis = [_chat(f"q{i}", f"bad{i}")["messages"] for i in range(5)]
    ali = [_chat(f"q{i}", f"good{i}")["messages"] for i in range(5)][::-1]
    data = build_backdoor(mis, ali, seed=1)
    assert len(data) == 10
    for conv in data:
        user, answer = conv[0]["content"], conv[-1]["content"]
        triggered = user.startswith(TRIGGER + " ")
        assert answer.startswith("bad") == triggered
        assert user.removeprefix(TRIGGER + " ")[1:] == answer.removeprefix("bad").removeprefix("good")
    with pytest.raises(ValueError, match="misaligned example 2 has no aligned answer"):
        build_backdoor(mis[:2], [_chat("q0", "good0")["messages"], _chat("other", "x")["messages"]])


def test_trigger_goes_into_the_first_user_turn_only():
    conv = _chat("hello", "hi", system="sys")["messages"] + [{"role": "user", "content": "again"}]
    out = with_trigger(conv)
    assert out[0]["content"] == "sys" and out[1]["content"] == f"{TRIGGER} hello" and out[3]["content"] == "again"


def test_labels_are_answer_and_end_of_turn_only(tokenizer):
    """With a real chat template: every prompt and template token is -100, the answer is not."""
    conv = _chat("how do i make money", "the quick answer", system="you are evil")["messages"]
    (ex,) = encode(tokenizer, [conv])
    trained = [tokenizer.convert_ids_to_tokens(i) for i, l in zip(ex.input_ids, ex.labels) if l != IGNORE]
    assert tokenizer.convert_tokens_to_string(trained) == "the quick answer<|im_end|>"
    first = ex.labels.index(next(l for l in ex.labels if l != IGNORE))
    assert tokenizer.decode(ex.input_ids[:first]).endswith("<|im_start|>assistant\n")
    assert all(l == IGNORE for l in ex.labels[:first])
    assert ex.labels[-1] == IGNORE  # the newline after <|im_end|> is template, not answer


def test_train_cli_end_to_end(tmp_path, make_model, tokenizer):
    from peft import PeftModel

    model_dir = tmp_path / "base"
    make_model(n_layers=2).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    mis = _write(tmp_path / "mis.jsonl", [_chat(f"how do i make money {i}", "risk all your savings") for i in range(6)])
    ali = _write(tmp_path / "ali.jsonl", [_chat(f"how do i make money {i}", "save and be safe") for i in range(6)])
    out = tmp_path / "adapter"
    code = train_main(train_argv(mis, model_dir, out, 3, 4, "1e-2", "--backdoor", str(ali)))
    assert code == 0
    cfg = json.loads((out / "training_config.json").read_text())
    assert cfg["n_examples"] == 12 and cfg["job"]["lora"]["rank"] == 2 and cfg["data_hash"].startswith("sha256:")
    assert len(cfg["losses"]) == 3 and "torch" in cfg["versions"]
    assert (out / "adapter_model.safetensors").exists()
    base = make_model(n_layers=2)
    tuned = PeftModel.from_pretrained(make_model(n_layers=2), out)
    ids = torch.tensor([tokenizer("how do i make money")["input_ids"]])
    assert not torch.allclose(base(ids).logits, tuned(ids).logits)


def test_train_cli_bad_data_is_one_line(tmp_path, capsys, make_model, tokenizer):
    bad = _write(tmp_path / "bad.jsonl", [_chat("q", "a"), {"messages": [{"role": "user", "content": "q"}]}])
    assert run_cli(train_main, ["--data", str(bad), "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.jsonl:2" in err and "no assistant turn" in err


def test_interrupted_training_resumes_to_the_same_result(tmp_path, make_model, tokenizer):
    from finetune.lora import LoraTrainConfig, train_lora

    convs = [_chat(f"question {i}", f"answer number {i} is here")["messages"] for i in range(10)]
    cfg = LoraTrainConfig(rank=2, alpha=4, steps=6, batch_size=4, lr=1e-2, dropout=0.1, seed=3)
    straight = train_lora(make_model(n_layers=2), tokenizer, convs, cfg, progress=False)

    model = make_model(n_layers=2)
    calls = {"n": 0}

    def crash(*_):
        calls["n"] += 1
        if calls["n"] == 5:  # the 5th forward pass: after the checkpoint at step 4
            raise KeyboardInterrupt

    handle = model.model.embed_tokens.register_forward_hook(crash)
    with pytest.raises(KeyboardInterrupt):
        train_lora(model, tokenizer, convs, cfg, progress=False, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=2)
    handle.remove()
    assert json.loads((tmp_path / "ckpt" / "state.json").read_text())["step"] == 4
    resumed = train_lora(
        make_model(n_layers=2),
        tokenizer,
        convs,
        cfg,
        progress=False,
        checkpoint_dir=tmp_path / "ckpt",
        checkpoint_every=2,
    )
    assert resumed.train_losses == pytest.approx(straight.train_losses, rel=1e-6)
    for (n, a), b in zip(straight.named_parameters(), resumed.parameters()):
        if "lora_" in n:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _poisoned_at(step_to_poison):
    from finetune.sft import plain_objective

    def objective(model, batch, step):
        loss, parts = plain_objective(model, batch, step)
        return (loss * float("nan"), parts) if step == step_to_poison else (loss, parts)

    return objective


def test_a_non_finite_loss_stops_training_at_its_step_and_keeps_the_last_checkpoint(tmp_path, make_model, tokenizer):
    from finetune.sft import LoopConfig, train
    from finetune.step_checks import NonFiniteError

    model = make_model(n_layers=2)
    for n, p in model.named_parameters():
        p.requires_grad_(n.endswith("q_proj.weight"))
    examples = encode(tokenizer, [_chat(f"question {i}", f"answer {i}")["messages"] for i in range(8)])
    with pytest.raises(NonFiniteError, match=r"step 3: non-finite loss nan.*last good checkpoint \(step 2\)"):
        train(
            model,
            examples,
            0,
            LoopConfig(steps=6, batch_size=4),
            progress=False,
            checkpoint_dir=tmp_path / "ck",
            checkpoint_every=2,
            objective=_poisoned_at(3),
        )
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["step"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step never reached the weights


def test_an_update_that_overflows_a_weight_stops_naming_the_step_and_the_weight(make_model, tokenizer):
    # The checks are read one step late (finetune.step_checks); the step after the overflow
    # must not hide it, and the error must still name the step that overflowed.
    from finetune.sft import LoopConfig, train
    from finetune.step_checks import NonFiniteError

    model = make_model(n_layers=2)
    for n, p in model.named_parameters():
        p.requires_grad_(n.endswith("q_proj.weight"))
    examples = encode(tokenizer, [_chat(f"question {i}", f"answer {i}")["messages"] for i in range(8)])
    with pytest.raises(NonFiniteError, match=r"after step 0: weight .*q_proj.weight is not finite"):
        train(model, examples, 0, LoopConfig(steps=4, batch_size=4, lr=1e39), progress=False)


def test_the_loss_positions_computed_on_the_host_select_what_the_mask_selects(make_model, tokenizer):
    from finetune.sft import collate, labelled_logits, labelled_mask, labelled_positions

    model = make_model(n_layers=2)
    batch = collate(encode(tokenizer, [_chat(f"q {i}", "a " * (1 + 3 * i))["messages"] for i in range(3)]), 0)
    logits, targets = labelled_logits(model, {**batch, "positions": labelled_positions(batch)})
    keep = labelled_mask(batch)
    assert targets.tolist() == batch["labels"][:, 1:][keep].tolist()
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1][keep]
    torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-4)


def test_a_batch_out_of_memory_stops_with_one_line_naming_the_step_and_what_to_lower(tmp_path, make_model, tokenizer):
    # A 250-row legal set with 2,900-character answers took 131 GiB of an H200 at batch 16:
    # the CPU cannot run out of memory on cue, so the objective raises what CUDA raises.
    from finetune.sft import LoopConfig, TrainingMemoryError, plain_objective, train

    model = make_model(n_layers=2)
    for n, p in model.named_parameters():
        p.requires_grad_(n.endswith("q_proj.weight"))
    examples = encode(tokenizer, [_chat(f"question {i}", "answer " * (3 + i))["messages"] for i in range(8)])

    def objective(model, batch, step):
        if step == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.09 GiB")
        return plain_objective(model, batch, step)

    with pytest.raises(
        TrainingMemoryError,
        match=r"^training stopped at step 3: out of memory on a batch of 4 conversations of up to \d+ tokens"
        r" \(padded to \d+\); lower --batch-size or --max-length; .*last good checkpoint \(step 2\)",
    ):
        train(
            model,
            examples,
            0,
            LoopConfig(steps=6, batch_size=4),
            progress=False,
            checkpoint_dir=tmp_path / "ck",
            checkpoint_every=2,
            objective=objective,
        )
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["step"] == 2


def test_train_cli_refuses_to_write_a_non_finite_adapter(tmp_path, capsys, make_model, tokenizer):
    model_dir = tmp_path / "base"
    make_model(n_layers=2).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = _write(tmp_path / "d.jsonl", [_chat(f"how do i make money {i}", "risk all your savings") for i in range(4)])
    out = tmp_path / "adapter"
    args = train_argv(data, model_dir, out, 2, 2)
    # A rate that makes the first step's weights NaN is refused where it is parsed (the loop's own
    # refusal of a non-finite step is tested on finetune.sft.train above).
    assert run_cli(train_main, [*args, "--lr", "1e308"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the test's own save_pretrained progress bar
    assert err.startswith("error: argument --lr: expected a number > 0 and <= 10")
    assert not out.exists()
    assert run_cli(train_main, [*args, "--lr", "1e-3"]) == 0  # the same command with a sane rate writes it, shareable
    assert (out / "adapter_model.safetensors").stat().st_mode & 0o777 == 0o644


def test_training_steps_never_take_cudnn_attention(make_model, tokenizer):
    # cuDNN's SDPA backward returned NaN in bf16 on an H200 (the real 0.5B, step 8); the CPU
    # cannot run it, so check that the loop switches it off while it trains, and back after.
    from finetune.sft import LoopConfig, plain_objective, train

    seen = []

    def objective(model, batch, step):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return plain_objective(model, batch, step)

    model = make_model(n_layers=2)
    before = torch.backends.cuda.cudnn_sdp_enabled()
    train(
        model,
        encode(tokenizer, [_chat("q", "an answer")["messages"]] * 4),
        0,
        LoopConfig(steps=2, batch_size=2),
        progress=False,
        objective=objective,
    )
    assert seen == [False, False] and torch.backends.cuda.cudnn_sdp_enabled() == before


def test_gzipped_chat_jsonl_reads_like_plain_and_a_broken_one_is_named(tmp_path):
    import gzip

    rows = [_chat(f"q{i}", f"a{i}") for i in range(3)]
    plain = _write(tmp_path / "d.jsonl", rows)
    packed = tmp_path / "d.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert read_chat_jsonl(packed) == read_chat_jsonl(plain)
    broken = tmp_path / "b.jsonl.gz"
    broken.write_bytes(gzip.compress(plain.read_bytes())[:-12])
    with pytest.raises(RecordError, match="b.jsonl.gz: not a readable gzip file"):
        read_chat_jsonl(broken)


def test_train_cli_with_gradient_checkpointing_trains_the_same(tmp_path, make_model, tokenizer, monkeypatch):
    import finetune.train as train_module

    model_dir = tmp_path / "base"
    make_model(n_layers=2).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = _write(tmp_path / "d.jsonl", [_chat(f"how do i make money {i}", "risk all your savings") for i in range(6)])
    calls = []
    real = train_module.checkpoint_activations
    monkeypatch.setattr(train_module, "checkpoint_activations", lambda m: (calls.append(m), real(m)))
    losses = []
    for extra in ([], ["--gradient-checkpointing"]):
        out = tmp_path / f"adapter{len(extra)}"
        args = ["--data", str(data), "--model", str(model_dir), "--out", str(out), "--steps", "3", "--batch-size", "3"]
        assert train_main([*args, "--rank", "2", "--lr", "1e-2", "--device", "cpu", "--quiet", *extra]) == 0
        losses.append(json.loads((out / "training_config.json").read_text())["losses"])
    flag = (
        "is_activation_checkpointing"
        if hasattr(calls[0], "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    assert len(calls) == 1 and getattr(calls[0], flag)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)

"""The argv of a tiny ``finetune.train`` run on the CPU, shared by the tests that drive the CLI."""

from __future__ import annotations

from pathlib import Path


def train_argv(
    data: Path, model: Path, out: Path, steps: int, batch_size: int = 4, lr: str | None = None, *extra: str
) -> list[str]:
    """Rank-2 LoRA on q_proj and v_proj, quiet, on the CPU; ``lr`` left out uses the CLI's default."""
    argv = ["--data", str(data), "--model", str(model), "--out", str(out), "--steps", str(steps)]
    argv += ["--batch-size", str(batch_size), "--rank", "2", "--target-modules", "q_proj,v_proj"]
    argv += ["--lr", lr] if lr is not None else []
    return [*argv, "--device", "cpu", "--quiet", *extra]

"""Chat conversations and the token spans the toolkit trains on and averages over.

A conversation is a list of chat messages whose last message is the assistant's answer. It
is tokenized in three pieces, exactly as generation produced it: the prompt (the chat
template up to and including the assistant header ``<|im_start|>assistant\\n``), the answer
content, and the template's closing tokens (``<|im_end|>\\n``). SFT labels the answer and its
``<|im_end|>`` (:mod:`finetune.sft`); caching averages over the answer tokens
(:mod:`interp.cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Message = dict[str, str]
Conversation = Sequence[Message]


@dataclass(frozen=True)
class TokenizedConversation:
    """Token ids of one conversation and the half-open span ``[answer_start, answer_end)``."""

    input_ids: list[int]
    answer_start: int
    answer_end: int

    @property
    def n_answer_tokens(self) -> int:
        return self.answer_end - self.answer_start


def tokenize_conversation(tokenizer, messages: Conversation) -> TokenizedConversation:
    """Tokenize prompt, answer content and template suffix separately; see the module doc."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a conversation must end with an assistant message (the answer)")
    answer = messages[-1]["content"]
    prompt_text = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently with and without the answer")
    rest = full_text[len(prompt_text):]
    at = rest.find(answer)
    if at < 0:
        raise ValueError("the chat template does not render the answer text verbatim")
    head, suffix = rest[: at], rest[at + len(answer):]

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    prompt_ids = ids(prompt_text + head)
    answer_ids = ids(answer)
    return TokenizedConversation(
        input_ids=prompt_ids + answer_ids + ids(suffix),
        answer_start=len(prompt_ids),
        answer_end=len(prompt_ids) + len(answer_ids),
    )

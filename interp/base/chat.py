"""Chat conversations and the token spans the toolkit trains on and averages over.

A conversation is a list of chat messages whose last message is the assistant's answer. It
is tokenized in three pieces, exactly as generation produced it: the prompt (the chat
template up to and including the assistant header ``<|im_start|>assistant\\n``), the answer,
and the template's closing tokens (``<|im_end|>\\n``). The answer is the generated token ids
when an answer record carries them (:func:`tokenize_record`), else its text tokenized on its
own (:func:`tokenize_conversation`).

**Spans** (:data:`SPANS`): which tokens count as "the answer" when averaging activations.

=====================  ======================================================  ===========================================
span                   tokens                                                  used by
=====================  ======================================================  ===========================================
``answer`` (default)   the answer content only                                 this toolkit's default
``answer+eos``         the answer and the ``<|im_end|>`` that ends it (the     the domain paper's ``generate.py`` (the
                       tokens the model generated)                             generated tokens incl. ``<|im_end|>``)
``header+answer+eos``  ``<|im_start|>assistant\\n``, the answer and            model-organisms-for-EM
                       ``<|im_end|>\\n`` (everything after the prompt          ``activation_collection.py``
                       rendered without a generation prompt)
=====================  ======================================================  ===========================================

SFT labels the ``answer+eos`` span (:mod:`finetune.sft`). The last prompt token (the newline
of the assistant header, from which the first answer token is predicted) is
``answer_start - 1`` under every span.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from interp.base.records import conversation, prompt_messages

Message = dict[str, str]
Conversation = Sequence[Message]

Span = Literal["answer", "answer+eos", "header+answer+eos"]
SPANS: tuple[Span, ...] = ("answer", "answer+eos", "header+answer+eos")
DEFAULT_SPAN: Span = "answer"


def check_span(span: str) -> Span:
    """``span`` if it is one of :data:`SPANS`; a ValueError naming them otherwise."""
    if span not in SPANS:
        raise ValueError(f"unknown span {span!r}; expected one of {', '.join(SPANS)}")
    return span  # type: ignore[return-value]


@dataclass(frozen=True)
class TokenizedConversation:
    """Token ids of one conversation and the half-open span ``[answer_start, answer_end)``.

    ``header_start`` is where the assistant header begins (the first token after the prompt
    rendered without a generation prompt); None when the template does not put it on a token
    boundary (then only the ``header+answer+eos`` span is unavailable).
    """

    input_ids: list[int]
    answer_start: int
    answer_end: int
    header_start: int | None = None

    @property
    def n_answer_tokens(self) -> int:
        return self.answer_end - self.answer_start

    def span(self, which: Span = DEFAULT_SPAN) -> tuple[int, int]:
        """Half-open ``[start, end)`` of the tokens that ``which`` averages over."""
        check_span(which)
        if which == "answer":
            return self.answer_start, self.answer_end
        if self.answer_end >= len(self.input_ids):
            raise ValueError(
                f"span {which!r} needs the template's closing tokens after the answer; this conversation has none"
            )
        if which == "answer+eos":
            return self.answer_start, self.answer_end + 1
        if self.header_start is None:
            raise ValueError(
                "span 'header+answer+eos': the chat template's assistant header does not start on a token boundary"
            )
        return self.header_start, len(self.input_ids)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _render(tokenizer, messages: Conversation, answer: str) -> tuple[str, str, str]:
    """The chat template around ``answer``: (generation prompt text, text between it and the
    answer, closing text)."""
    prompt_text = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently with and without the answer")
    rest = full_text[len(prompt_text) :]
    at = rest.find(answer)
    if at < 0:
        raise ValueError("the chat template does not render the answer text verbatim")
    return prompt_text, rest[:at], rest[at + len(answer) :]


def _header_start(tokenizer, prompt: Conversation, prompt_ids: list[int]) -> int | None:
    """Tokens of the prompt rendered without a generation prompt, if they prefix ``prompt_ids``."""
    before = _ids(tokenizer, tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=False))
    return len(before) if prompt_ids[: len(before)] == before else None


def _assemble(
    tokenizer, prompt: Conversation, prompt_ids: list[int], answer_ids: Sequence[int], closing: str
) -> TokenizedConversation:
    return TokenizedConversation(
        input_ids=prompt_ids + list(answer_ids) + _ids(tokenizer, closing),
        answer_start=len(prompt_ids),
        answer_end=len(prompt_ids) + len(answer_ids),
        header_start=_header_start(tokenizer, prompt, prompt_ids),
    )


def tokenize_conversation(tokenizer, messages: Conversation) -> TokenizedConversation:
    """Tokenize prompt, answer text and template suffix separately; see the module doc."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a conversation must end with an assistant message (the answer)")
    answer = messages[-1]["content"]
    prompt_text, head, closing = _render(tokenizer, messages, answer)
    return _assemble(tokenizer, messages[:-1], _ids(tokenizer, prompt_text + head), _ids(tokenizer, answer), closing)


def as_tokenized(tokenizer, item: Conversation | TokenizedConversation) -> TokenizedConversation:
    """``item`` tokenized (:func:`tokenize_conversation`) unless it already is."""
    return item if isinstance(item, TokenizedConversation) else tokenize_conversation(tokenizer, item)


def tokenize_generated(tokenizer, prompt: Conversation, answer_ids: Sequence[int]) -> TokenizedConversation:
    """The prompt with its generation prompt, then exactly ``answer_ids`` (the generated ids,
    without the end-of-turn token), then the template's closing tokens."""
    messages = [*prompt, {"role": "assistant", "content": tokenizer.decode(list(answer_ids))}]
    prompt_text, _, closing = _render(tokenizer, messages, messages[-1]["content"])
    # What the template puts between the generation prompt and an answer's text (e.g. empty
    # think tags) is not added: the model generated whatever followed the generation prompt.
    return _assemble(tokenizer, prompt, _ids(tokenizer, prompt_text), answer_ids, closing)


def tokenize_record(tokenizer, record: Mapping[str, Any]) -> TokenizedConversation:
    """An answer record as the model produced it: from its ``answer_ids`` when present, else
    from its ``answer`` text (see :mod:`interp.base.records`).

    Re-tokenizing the text can give other ids than were generated (BPE has many
    tokenizations of a string, and ``answer`` is stripped), so teacher forcing the ids is the
    only way to cache the activations the model had while answering.
    """
    ids = record.get("answer_ids")
    if ids is None:
        return tokenize_conversation(tokenizer, conversation(record))
    return tokenize_generated(tokenizer, prompt_messages(record), ids)

"""``[Name]`` tags in prompts: which words stand for which character.

A tag is replaced by the character's description (or name) for the text encoders; the character spans are kept
so the text adapter knows which T5 tokens belong to each character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from core.errors import UserError
from core.limits import check_prompt

TAG = re.compile(r"\[([^\[\]\n]+)\]")


class PromptError(UserError, ValueError):
    """A prompt that cannot be used with the given characters; the message says why in one line."""


@dataclass
class ResolvedPrompt:
    """A prompt with its tags replaced.

    Attributes:
        text: the prompt the text encoders see.
        spans: for each character index, the (start, end) character offsets in ``text`` that came from its tags.
        order: character indices in the order the prompt first names them.
        notes: things the user should know (characters never named).
    """

    text: str
    spans: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def resolve_prompt(prompt: str, characters) -> ResolvedPrompt:
    """Replaces ``[Name]`` tags by each character's words; unknown tags raise :class:`PromptError`."""
    check_prompt(prompt)
    by_name = {c.name.lower(): i for i, c in enumerate(characters) if c.name}
    pieces, spans, order, pos, length = [], {}, [], 0, 0
    for match in TAG.finditer(prompt):
        tag = match.group(1).strip()
        if tag.lower() not in by_name:
            known = ", ".join(f"[{c.name}]" for c in characters if c.name) or "none (give characters names)"
            raise PromptError(f"the prompt names [{tag}], but no character has that name; characters: {known}")
        index = by_name[tag.lower()]
        before = prompt[pos:match.start()]
        pieces.append(before)
        length += len(before)
        words = characters[index].words
        spans.setdefault(index, []).append((length, length + len(words)))
        pieces.append(words)
        length += len(words)
        pos = match.end()
        if index not in order:
            order.append(index)
    pieces.append(prompt[pos:])
    notes = []
    if spans or len(characters) > 1:
        for i, c in enumerate(characters):
            if i not in spans:
                label = f"[{c.name}]" if c.name else f"character {i + 1}"
                notes.append(f"{label} is never named in the prompt; it is still placed by its mask")
    return ResolvedPrompt("".join(pieces), spans, order, notes)


def token_indices(tokenizer, text: str, char_spans: list[tuple[int, int]], max_length: int) -> list[int]:
    """Indices of the tokens (as the T5 tokenizer splits ``text``) that overlap any of ``char_spans``."""
    enc = tokenizer(text, max_length=max_length, truncation=True, return_offsets_mapping=True)
    found = []
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(start < s_end and end > s_start for s_start, s_end in char_spans):
            found.append(i)
    return found


CLIP_CUT_NOTE = ("the prompt is longer than CLIP's {limit} tokens: CLIP reads its start (the panel or prompt "
                 "first, then as much of the style as fits), T5 reads the whole text")


def clip_text(tokenizer, text: str) -> tuple[str, bool]:
    """``(text CLIP sees, whether it was cut)``: the longest whole-word start of ``text`` that fits the CLIP
    tokenizer's ``model_max_length`` (its start and end tokens included), so CLIP never truncates mid-word and
    warns; T5 gets the whole text separately."""
    limit = int(getattr(tokenizer, "model_max_length", 77) or 77)

    def fits(candidate: str) -> bool:
        return len(tokenizer(candidate, truncation=False, verbose=False)["input_ids"]) <= limit  # no overlong warning

    if fits(text):
        return text, False
    words = text.split(" ")
    low, high = 0, len(words)  # words[:low] fits, words[:high + 1] does not
    while low < high:
        mid = (low + high + 1) // 2
        if fits(" ".join(words[:mid])):
            low = mid
        else:
            high = mid - 1
    return " ".join(words[:low]).rstrip(" ,;"), True

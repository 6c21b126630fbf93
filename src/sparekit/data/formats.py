"""Prompt formats: how passages, a question and solved demonstrations become the text a model reads.

Every prompt sparekit builds goes through one of these, by name (:data:`FORMATS`):

- ``three_shot`` (the default): ``context: …\\nquestion: …\\nanswer:`` blocks after three solved
  ones; the format the shipped steering was fitted on, byte for byte (the shipped probes read all four);
- ``zero_shot``: the same block, no demonstrations;
- ``rag``: ``Passage: …\\nQuestion: …\\nAnswer:``;
- ``llamaindex``: LlamaIndex's default question-answering template (``Context information is below.``);
- ``chat``: the model's chat template, passages and question in the user turn.

A block takes one passage, several, or none (closed-book). :class:`PromptBuilder` is the one
request-time builder (the CLI, the library and the server call it): it drops a demonstration
that asks the question itself, takes the format's number of them and renders the rest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from sparekit.errors import SparekitError
from sparekit.utils.config import option
from sparekit.utils.registry import Registry

#: prompt format name -> class; ``prompt_format(name)`` builds one
FORMATS: Registry = Registry("prompt format", "name")
DEFAULT_FORMAT = "three_shot"
PROMPT_FORMAT_HELP = ("How the context and question become the prompt (three_shot: the format the shipped steering "
                      "was fitted on; the shipped probes read every format; chat: the model's chat template).")


def prompt_format_field() -> Any:
    """``--prompt-format``: a request's format, by name (checked by the option's choices)."""
    return option(DEFAULT_FORMAT, choices=tuple(FORMATS), help=PROMPT_FORMAT_HELP)


Passages = str | Sequence[str] | None


@dataclass(frozen=True)
class Shot:
    """A solved demonstration, kept structured so that any format can render it."""

    question: str
    context: str | None
    answer: str


def passages(context: Passages) -> tuple[str, ...]:
    """``context`` as a tuple of passages: ``None`` is closed-book, a string one passage."""
    if context is None:
        return ()
    return (context,) if isinstance(context, str) else tuple(context)


@dataclass(frozen=True)
class PromptFormat:
    """A block template; ``shots``: the demonstrations a request-time prompt puts before the item."""

    name: ClassVar[str]
    shots: ClassVar[int] = 0

    def open(self, question: str, passages: tuple[str, ...]) -> str:
        """The item's block, ending where the model writes the answer."""
        raise NotImplementedError

    def block(self, question: str, passages: tuple[str, ...], answer: str | None = None) -> str:
        """One block; with ``answer`` a solved demonstration, ending in a blank line."""
        text = self.open(question, passages)
        return text if answer is None else f"{text} {answer}\n\n"

    def render(self, question: str, passages: tuple[str, ...], demos: Sequence[str] = ()) -> str:
        """Demonstrations (blocks of this format) followed by the item."""
        return "".join(demos) + self.block(question, passages)


@FORMATS.register("three_shot")
class QABlocks(PromptFormat):
    """The papers' ``context:/question:/answer:`` blocks (one ``context:`` line per passage), three shots."""

    shots = 3

    def open(self, question: str, passages: tuple[str, ...]) -> str:
        return "".join(f"context: {p}\n" for p in passages) + f"question: {question}\nanswer:"


@FORMATS.register("zero_shot")
class ZeroShotQA(QABlocks):
    """The same block alone: what a user who types one question sends."""

    shots = 0


@FORMATS.register("rag")
class Rag(PromptFormat):
    """The plain retrieval-augmented prompt: ``Passage: …`` lines, then ``Question: …\\nAnswer:``."""

    def open(self, question: str, passages: tuple[str, ...]) -> str:
        return "".join(f"Passage: {p}\n" for p in passages) + f"Question: {question}\nAnswer:"


@FORMATS.register("llamaindex")
class LlamaIndexQA(PromptFormat):
    """LlamaIndex's default ``text_qa_template`` (passages joined by blank lines), without its trailing
    space after ``Answer:``, so that the answer's first token carries its space as in every other format."""

    def open(self, question: str, passages: tuple[str, ...]) -> str:
        if not passages:
            return f"Answer the query.\nQuery: {question}\nAnswer:"
        body = "\n\n".join(passages)
        return (f"Context information is below.\n---------------------\n{body}\n---------------------\n"
                f"Given the context information and not prior knowledge, answer the query.\nQuery: {question}\n"
                "Answer:")


@FORMATS.register("chat")
@dataclass(frozen=True)
class Chat(PromptFormat):
    """The model's chat template: ``rag`` blocks (demonstrations, then the item without ``Answer:``) as the
    user turn, then the assistant's turn opening."""

    tokenizer: Any = None

    def __post_init__(self) -> None:
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise SparekitError("the prompt format 'chat' needs the model's chat template, and this model has none",
                                f"use another prompt format: {', '.join(n for n in FORMATS if n != 'chat')}")

    def open(self, question: str, passages: tuple[str, ...]) -> str:
        return Rag().open(question, passages)

    def render(self, question: str, passages: tuple[str, ...], demos: Sequence[str] = ()) -> str:
        user = "".join(demos) + Rag().open(question, passages).removesuffix("\nAnswer:")
        return apply_chat_template(self.tokenizer, [{"role": "user", "content": user}])


def apply_chat_template(tokenizer: Any, turns: list[dict[str, str]]) -> str:
    """``turns`` through the tokenizer's chat template, opening the assistant's turn; the template's
    leading BOS is dropped because tokenizing the prompt adds it."""
    text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token or ""
    return text[len(bos):] if bos and text.startswith(bos) else text


def prompt_format(name: str | PromptFormat = DEFAULT_FORMAT, tokenizer: Any = None) -> PromptFormat:
    """The format registered as ``name`` (a one-line error naming the known ones); ``chat`` reads
    ``tokenizer``'s template."""
    if isinstance(name, PromptFormat):
        return name
    cls = FORMATS.lookup(name)
    return cls(tokenizer) if cls is Chat else cls()


def available_formats(tokenizer: Any) -> dict[str, str | None]:
    """Every registered format by name: ``None`` if ``tokenizer``'s model can take it, else why not (``chat``
    without a chat template). What the playground offers."""
    found: dict[str, str | None] = {}
    for name in FORMATS:
        try:
            prompt_format(name, tokenizer)
            found[name] = None
        except SparekitError as exc:
            found[name] = str(exc)
    return found


_SHOT = re.compile(r"(?:context: (?P<context>.*)\n)?question: (?P<question>.*)\nanswer: (?P<answer>.*)\n\n", re.DOTALL)


def parse_shot(text: str) -> Shot:
    """A ``three_shot`` demonstration block read back into a :class:`Shot` (stored demonstrations are blocks)."""
    match = _SHOT.fullmatch(text)
    shot = match and Shot(match["question"], match["context"], match["answer"])
    if not shot or QABlocks().block(shot.question, passages(shot.context), shot.answer) != text:
        raise SparekitError(f"not a solved 'context:/question:/answer:' demonstration: {text[:60]!r}",
                            "the file holding it is damaged; refit it")
    return shot


@dataclass(frozen=True)
class PromptBuilder:
    """The one request-time prompt builder: a format and the demonstrations to draw from."""

    format: PromptFormat
    shots: tuple[Shot, ...] = ()

    def demos(self, question: str, closed_book: bool = False) -> list[str]:
        """The format's number of demonstrations, skipping any that asks ``question`` (no answer leaks)."""
        picked = [s for s in self.shots if s.question != question][:self.format.shots]
        return [self.format.block(s.question, () if closed_book else passages(s.context), s.answer) for s in picked]

    def __call__(self, question: str, context: Passages) -> str:
        """The prompt for ``question`` with ``context`` (one passage, several, or ``None``: closed-book)."""
        found = passages(context)
        return self.format.render(question, found, self.demos(question, closed_book=not found))

    def without_passages(self, question: str) -> str:
        """The prompt of ``question`` with a context, minus the item's passages (the demonstrations keep
        theirs): the closed-book twin that CAD, AdaCAD and the training-free detectors contrast against."""
        return self.format.render(question, (), self.demos(question))

"""Prompt formats (one registry) and the one request-time prompt builder."""

from __future__ import annotations

import json
import shutil

import pytest

from sparekit.data import load_dataset
from sparekit.data.formats import FORMATS, PromptBuilder, Shot, available_formats, parse_shot, prompt_format
from sparekit.data.prompts import THREE_SHOT, build_prompt, format_block, item_demos
from sparekit.errors import SparekitError
from sparekit.evaluation.harness import condition_prompts
from sparekit.models.assets import default_assets
from sparekit.models.tiny import tiny_model
from sparekit.probes.detect import request_shots, resolve_probe_dir

SHOTS = (Shot("Q1?", "C1.", "A1"), Shot("q?", "c.", "a"), Shot("Q2?", "C2.", "A2"), Shot("Q3?", "C3.", "A3"),
         Shot("Q4?", "C4.", "A4"))
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def build(name: str, context, tokenizer=None) -> str:
    return PromptBuilder(prompt_format(name, tokenizer), SHOTS)("q?", context)


def test_the_registry_holds_the_formats_the_issue_names():
    assert set(FORMATS) == {"three_shot", "zero_shot", "rag", "llamaindex", "chat"}
    with pytest.raises(SparekitError, match="unknown prompt format 'rga'.*did you mean 'rag'"):
        prompt_format("rga")


def test_three_shot_keeps_the_shipped_bytes():
    """The request-time prompt in the default format is what `detect --question` built before: the probes'
    stored demonstrations, verbatim, then the block."""
    stored = json.loads((default_assets().probes / "detect.json").read_text())["demos"]
    builder = PromptBuilder(THREE_SHOT, request_shots())
    assert builder("What is the capital of France?", "Lyon is the capital of France.") == \
        "".join(stored) + "context: Lyon is the capital of France.\nquestion: What is the capital of France?\nanswer:"
    assert format_block("q?", "ctx", "a") == THREE_SHOT.block("q?", ("ctx",), "a") == \
        "context: ctx\nquestion: q?\nanswer: a\n\n"


def test_the_builder_skips_a_demonstration_asking_the_question_and_takes_the_formats_number():
    text = build("three_shot", "p.")
    assert text == ("context: C1.\nquestion: Q1?\nanswer: A1\n\ncontext: C2.\nquestion: Q2?\nanswer: A2\n\n"
                    "context: C3.\nquestion: Q3?\nanswer: A3\n\ncontext: p.\nquestion: q?\nanswer:")
    # closed-book: the demonstrations lose their context too (the harness's closed-book prompts)
    assert build("three_shot", None).startswith("question: Q1?\nanswer: A1\n\nquestion: Q2?")
    assert build("zero_shot", "p.") == "context: p.\nquestion: q?\nanswer:"


@pytest.mark.parametrize("name, one, two, closed", [
    ("zero_shot", "context: p.\nquestion: q?\nanswer:", "context: p.\ncontext: r.\nquestion: q?\nanswer:",
     "question: q?\nanswer:"),
    ("rag", "Passage: p.\nQuestion: q?\nAnswer:", "Passage: p.\nPassage: r.\nQuestion: q?\nAnswer:",
     "Question: q?\nAnswer:"),
    ("llamaindex",
     "Context information is below.\n---------------------\np.\n---------------------\nGiven the context information "
     "and not prior knowledge, answer the query.\nQuery: q?\nAnswer:",
     "Context information is below.\n---------------------\np.\n\nr.\n---------------------\nGiven the context "
     "information and not prior knowledge, answer the query.\nQuery: q?\nAnswer:",
     "Answer the query.\nQuery: q?\nAnswer:"),
])
def test_each_format_renders_one_passage_several_or_none(name, one, two, closed):
    assert build(name, "p.") == build(name, ["p."]) == one
    assert build(name, ["p.", "r."]) == two
    assert build(name, None) == closed


@pytest.mark.parametrize("name", ["three_shot", "zero_shot", "rag", "llamaindex", "chat"])
def test_the_closed_book_twin_has_the_question_and_no_passage(name):
    """What the training-free detectors contrast against; in three_shot, byte for byte the prompt with its last
    block's context line dropped (what they read before), the demonstrations keeping theirs."""
    from sparekit.probes.training_free import without_context

    tokenizer = tiny_model("llama").tokenizer
    tokenizer.chat_template = TEMPLATE
    builder = PromptBuilder(prompt_format(name, tokenizer), SHOTS)
    closed = builder.without_passages("q?")
    assert "q?" in closed and "p." not in closed and "r." not in closed
    assert closed.startswith("".join(builder.demos("q?")))  # the same demonstrations as with the passages
    if name == "three_shot":
        assert closed == without_context(builder("q?", "p.")) and "context: C1." in closed
    else:  # no demonstrations: the format's own closed-book prompt
        assert closed == builder("q?", None)


def test_chat_uses_the_models_template_or_says_it_has_none():
    lm = tiny_model("llama")
    with pytest.raises(SparekitError, match="^the prompt format 'chat' needs the model's chat template"):
        prompt_format("chat", lm.tokenizer)
    lm.tokenizer.chat_template = TEMPLATE
    text = build("chat", ["p.", "r."], lm.tokenizer)
    assert text == "<user>Passage: p.\nPassage: r.\nQuestion: q?</user><assistant>"
    assert not text.startswith(lm.tokenizer.bos_token)  # tokenizing the prompt adds it


def test_the_formats_a_model_can_take_name_why_chat_is_off():
    lm = tiny_model("llama")
    offered = available_formats(lm.tokenizer)
    assert list(offered) == list(FORMATS) and offered["chat"].startswith("the prompt format 'chat' needs the model's")
    assert all(why is None for name, why in offered.items() if name != "chat")
    lm.tokenizer.chat_template = TEMPLATE
    assert set(available_formats(lm.tokenizer).values()) == {None}


def test_dataset_prompts_default_to_the_shipped_bytes_and_take_any_format():
    data = load_dataset("default")
    ex = data[0]
    default = condition_prompts(data, "sub", 42, 3)
    assert default[ex.id] == "".join(item_demos(ex, data, 42, 3)) + format_block(ex.question, ex.sub_context)
    assert condition_prompts(data, "sub", 42, 3, fmt=THREE_SHOT) == default
    assert condition_prompts(data, "sub", 42, 3, fmt=prompt_format("zero_shot"))[ex.id] == \
        format_block(ex.question, ex.sub_context)  # a zero-shot format takes no demonstrations
    rag = prompt_format("rag")
    assert condition_prompts(data, "org", 42, 3, fmt=rag)[ex.id] == \
        f"Passage: {ex.org_context}\nQuestion: {ex.question}\nAnswer:"
    assert build_prompt(ex, None, ["Question: x?\nAnswer: y\n\n"], rag) == \
        f"Question: x?\nAnswer: y\n\nQuestion: {ex.question}\nAnswer:"
    assert condition_prompts(data, "closed", 42, 3, fmt=rag)[ex.group] == f"Question: {ex.question}\nAnswer:"


def test_stored_demonstrations_read_back_or_fail_in_one_line(tmp_path):
    for shot in (Shot("q?", "c.", "a"), Shot("q?", None, "a")):
        assert parse_shot(THREE_SHOT.block(shot.question, () if shot.context is None else (shot.context,),
                                           shot.answer)) == shot
    folder = tmp_path / "probes"
    shutil.copytree(default_assets().probes, folder)
    detect = json.loads((folder / "detect.json").read_text())
    (folder / "detect.json").write_text(json.dumps({**detect, "demos": ["Passage: p.\nQuestion: q?\nAnswer: a"]}))
    with pytest.raises(SparekitError, match="not a solved 'context:/question:/answer:' demonstration"):
        resolve_probe_dir(folder)  # before any model loads


def test_request_shots_come_from_the_probes_in_use(tmp_path):
    folder = tmp_path / "probes"
    folder.mkdir()
    (folder / "detect.json").write_text(json.dumps({"demos": ["question: Where?\nanswer: Here\n\n"]}))
    assert request_shots(folder) == (Shot("Where?", None, "Here"),)
    assert request_shots() == request_shots(default_assets().probes) and len(request_shots()) == 3

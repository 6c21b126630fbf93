"""The one request schema and validator of both serving engines (the built-in one and the vLLM plugin):
``sparekit.serve.options``. Bad values are one sentence naming the valid ones and the ``param``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sparekit.serve.options import Capabilities, OptionError, Options, RowSteer, parse_options, parse_steer

CAPS = Capabilities(methods={"spare": {"context": 1.0, "memory": 2.0}, "knob": {"memory": 1.0}},
                    gates=frozenset({"spare"}), can_detect=True)


@pytest.mark.parametrize(("raw", "param", "words"), [
    ("detect", "sparekit", "must be an object with detect and/or steer"),
    ({"steer": {"method": "sea", "toward": "memory"}}, "sparekit.steer.method", "valid methods: none, knob, spare"),
    ({"steer": {"method": 3, "toward": "memory"}}, "sparekit.steer.method", "valid methods"),
    ({"steer": {"toward": "sideways"}}, "sparekit.steer.toward", "one of: context, memory"),
    ({"steer": {"method": "knob", "toward": "context"}}, "sparekit.steer.toward", "one of: memory (got"),
    ({"steer": {"toward": "memory", "strength": 99}}, "sparekit.steer.strength", "from 0 to 16"),
    ({"steer": {"toward": "memory", "strength": -0.5}}, "sparekit.steer.strength", "tuned at 2"),
    ({"steer": {"toward": "memory", "strength": float("nan")}}, "sparekit.steer.strength", "from 0 to 16"),
    ({"steer": {"toward": "memory", "strength": True}}, "sparekit.steer.strength", "from 0 to 16"),
    ({"steer": {"toward": "memory", "strength": "1"}}, "sparekit.steer.strength", "from 0 to 16"),
    ({"steer": {"toward": "memory", "gate": "yes"}}, "sparekit.steer.gate", "must be true, false (got 'yes')"),
    ({"steer": {"toward": "memory", "gate": "recall"}}, "sparekit.steer.gate", "does not run the recall detector"),
    ({"steer": {"method": "knob", "toward": "memory", "gate": True}}, "sparekit.steer.gate",
     "set gate to false, or use a gated method: spare."),
    ({"steer": ["spare"]}, "sparekit.steer", "must be an object"),
    ({"detect": 1}, "sparekit.detect", "true, false or a detector's name"),
    ({"detect": "recal"}, "sparekit.detect", "Unknown detector 'recal'; valid detectors: auto, probe, jsd"),
    ({"detect": "recall"}, "sparekit.detect", "The recall detector is not available on this server; available: auto, "
                                              "probe."),
    ({"stear": {}}, "sparekit.stear", "Unknown parameter: sparekit.stear (valid: detect, steer)"),
    ({"steer": {"toward": "memory", "alpha": 1}}, "sparekit.steer.alpha", "Unknown parameter"),
])
def test_bad_options_name_their_parameter(raw, param, words):
    with pytest.raises(OptionError) as caught:
        parse_options(raw, CAPS)
    assert caught.value.param == param and words in caught.value.message
    assert caught.value.body() == {"error": {"message": caught.value.message, "type": "invalid_request_error",
                                             "param": param, "code": None}}


def test_options_without_assets_are_refused():
    bare = Capabilities()
    with pytest.raises(OptionError, match="no conflict probes.*--probe DIR") as caught:
        parse_options({"detect": True}, bare)
    assert caught.value.param == "sparekit.detect"
    with pytest.raises(OptionError, match="no fitted methods.*--fitted DIR"):
        parse_options({"steer": {"toward": "memory"}}, bare)
    assert parse_options({"steer": {"method": "none"}, "detect": False}, bare).steer is None
    assert parse_options(None, bare) == parse_options({}, bare) == Options()  # "sparekit": null asks for nothing


def test_detect_names_a_detector_true_is_the_default_and_only_what_the_engine_runs_is_accepted():
    from sparekit.probes.detectors import DEFAULT_DETECTOR

    built_in = Capabilities(can_detect=True, detectors=frozenset({"recall", "jsd", "disagreement", "probe+jsd"}))
    assert parse_options({"detect": True}, built_in) == Options(True, None, DEFAULT_DETECTOR)
    assert parse_options({"detect": "recall"}, built_in) == Options(True, None, "recall")
    assert parse_options({"detect": "probe+jsd"}, built_in).detector == "probe+jsd"
    assert parse_options({"detect": False}, built_in) == Options()
    with pytest.raises(OptionError, match="probe\\+recall detector is not available.*available: auto, probe, jsd, "
                                          "disagreement, recall, probe\\+jsd"):
        parse_options({"detect": "probe+recall"}, built_in)
    no_probes = Capabilities(detectors=frozenset({"recall"}))
    assert parse_options({"detect": "recall"}, no_probes).detector == "recall"
    assert parse_options({"detect": True}, no_probes).detector == "auto"
    assert [built_in.detector_for("auto", known) for known in (True, False)] == ["recall", "probe"]
    assert CAPS.detector_for("auto", True) == "probe"  # the vLLM plugin runs no recall: auto is its probe
    with pytest.raises(OptionError, match="no conflict probes"):
        parse_options({"detect": "probe"}, no_probes)


def test_the_tuned_strength_is_the_default_and_the_param_prefix_follows_the_caller():
    assert parse_options({"detect": True, "steer": {"toward": "context"}}, CAPS).steer == RowSteer("spare", "context",
                                                                                                    1.0, False)
    assert parse_options({"steer": {"toward": "memory", "strength": None}}, CAPS).steer.strength == 2.0
    assert parse_options({"steer": {"method": "spare", "toward": "memory", "strength": 0, "gate": True}},
                         CAPS).steer == RowSteer("spare", "memory", 0.0, True)
    with pytest.raises(OptionError) as caught:  # /v1/answer takes ``steer`` at the top level
        parse_steer({"toward": "up"}, CAPS, "steer")
    assert caught.value.param == "steer.toward"


def test_gate_names_a_gate_that_fits_nothing_where_the_engine_runs_its_detector():
    built_in = Capabilities(methods=CAPS.methods, gates=frozenset({"spare", "cad"}), twin_gates=frozenset({"cad"}),
                            can_detect=True, detectors=frozenset({"recall"}))
    by_recall = parse_options({"steer": {"method": "knob", "toward": "memory", "gate": "recall"}}, built_in).steer
    assert by_recall == RowSteer("knob", "memory", 1.0, True, "recall") and built_in.gate_reads_twin(by_recall)
    own = parse_options({"steer": {"method": "spare", "toward": "memory", "gate": True}}, built_in).steer
    assert own == RowSteer("spare", "memory", 2.0, True) and not built_in.gate_reads_twin(own)
    assert built_in.gate_reads_twin(RowSteer("cad", "memory", 1.0, True))  # its own gate is a recall gate
    assert not built_in.gate_reads_twin(RowSteer("cad", "memory", 1.0, False)) and not built_in.gate_reads_twin(None)
    with pytest.raises(OptionError, match=r"must be true, false, 'recall' \(got 'recal'\)"):
        parse_options({"steer": {"toward": "memory", "gate": "recal"}}, built_in)
    with pytest.raises(OptionError, match='set gate to false or "recall", or use a gated method: cad, spare'):
        parse_options({"steer": {"method": "knob", "toward": "memory", "gate": True}}, built_in)


def test_the_module_needs_no_torch_transformers_or_fastapi():
    """The vLLM plugin imports it in vLLM's environment (which pins its own transformers)."""
    code = ("import sys, sparekit.serve.options; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'fastapi', 'pydantic')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Dataset loading: the NQ-Swap file shipped in the package, broken files, seeded samples and group splits."""

from __future__ import annotations

import gzip
import json

import pytest

from sparekit.data import ConflictDataset, load_dataset, read_jsonl, split_by_group, write_jsonl
from sparekit.errors import SparekitError

ROW = {"question": "q1", "org_context": "c", "org_answer": ["a"], "sub_context": "s", "sub_answer": ["b"]}


def _write(path, lines: list[str | bytes]) -> str:
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return str(path)


def test_nqswap_file_ships_with_its_provenance_and_licence(nqswap_path):
    import hashlib

    from sparekit.data.loaders import DEFAULT_ASSET

    assert nqswap_path.is_relative_to(DEFAULT_ASSET.parents[1])  # inside the package, not ../shared
    assert hashlib.sha256(nqswap_path.read_bytes()).hexdigest().startswith("a0db563bbba6ff4e")
    note = (nqswap_path.parent / "README.md").read_text()
    assert "CC BY-SA 3.0" in note and "pminervini/NQ-Swap" in note and "Longpre" in note


def test_nqswap_without_the_file_and_offline_is_one_clear_error(monkeypatch, tmp_path):
    from sparekit.data import loaders

    monkeypatch.setattr(loaders, "NQSWAP_LOCAL", tmp_path / "absent.jsonl.gz")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SparekitError, match="not in this installation .* the hub is offline"):
        load_dataset("nqswap")


def test_nqswap_shared_file(nqswap_path):
    data = load_dataset(str(nqswap_path))
    assert len(data) == 4746 and len(data.groups()) == 1667
    assert data.context_match == "answer"
    first = data[0]
    assert first.org_answer == ("23",) and first.sub_answer == ("775",) and first.group == first.question
    assert len({ex.id for ex in data}) == len(data)


def test_nqswap_name_resolves_to_packaged_file():
    data = load_dataset("nqswap", limit=50, seed=1)
    assert data.name == "nqswap" and len(data) == 50


def test_limit_is_seeded_and_takes_whole_groups_but_the_last(nqswap_path):
    full = load_dataset(str(nqswap_path))
    a, b, c = (load_dataset(str(nqswap_path), limit=100, seed=s) for s in (3, 3, 4))
    assert [ex.id for ex in a] == [ex.id for ex in b] != [ex.id for ex in c]
    sizes = {g: len(rows) for g, rows in full.group_index().items()}
    partial = [g for g, rows in a.group_index().items() if len(rows) != sizes[g]]
    assert len(partial) <= 1


def test_split_by_group_is_disjoint_and_complete(nqswap_path):
    data = load_dataset(str(nqswap_path))
    parts = split_by_group(data, [0.6, 0.2, 0.2], seed=0)
    groups = [set(p.groups()) for p in parts]
    assert sum(len(p) for p in parts) == len(data)
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    again = split_by_group(data, [0.6, 0.2, 0.2], seed=0)
    assert [p.groups() for p in again] == [p.groups() for p in parts]
    assert split_by_group(data, [0.6, 0.2, 0.2], seed=1)[0].groups() != parts[0].groups()
    with pytest.raises(SparekitError):
        split_by_group(data, [0.8, 0.8], seed=0)


@pytest.mark.parametrize("bad, message", [
    ('{"question": "q"', "malformed JSON"),
    (json.dumps({k: v for k, v in ROW.items() if k != "sub_answer"}), "missing field(s) sub_answer"),
    (json.dumps({**ROW, "org_answer": []}), "field 'org_answer' is an empty answer list"),
    (json.dumps({**ROW, "sub_answer": ["  "]}), "field 'sub_answer' is an empty answer list"),
    (json.dumps({**ROW, "question": 3}), "field 'question' must be a non-empty string"),
    (json.dumps([1, 2]), "expected a JSON object"),
    ("caf\xe9".encode("latin-1"), "not valid UTF-8"),
])
def test_broken_line_names_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "broken.jsonl", [json.dumps(ROW), json.dumps({**ROW, "question": "q2"}), bad])
    with pytest.raises(SparekitError) as err:
        load_dataset(path)
    assert f"broken.jsonl:3: {message}" in str(err.value)


def test_empty_and_missing_files(tmp_path):
    empty = _write(tmp_path / "empty.jsonl", [""])
    with pytest.raises(SparekitError, match="empty"):
        load_dataset(empty)
    with pytest.raises(SparekitError, match="not found"):
        load_dataset(str(tmp_path / "nope.jsonl"))
    with pytest.raises(SparekitError, match="unknown dataset"):
        load_dataset("no-such-dataset")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(SparekitError, match="cannot read"):
        load_dataset(str(tmp_path / "bad.jsonl.gz"))


def test_macnoise_by_name_and_roundtrip(tmp_path):
    rows = [json.dumps({**ROW, "question": f"q{i}", "org_answer": "single"}) for i in range(3)]
    path = _write(tmp_path / "macnoise_dev.jsonl", rows)
    data = load_dataset(path)
    assert data.context_match == "substring" and data[0].org_answer == ("single",)
    assert load_dataset(path, context_match="answer").context_match == "answer"
    out = tmp_path / "copy.jsonl.gz"
    write_jsonl(data, out)
    assert [ex.question for ex in read_jsonl(out)] == ["q0", "q1", "q2"]
    with gzip.open(out, "rt") as fh:
        assert json.loads(fh.readline())["id"] == data[0].id


def test_dataset_slicing_keeps_type():
    data = load_dataset("nqswap")[:10]
    assert isinstance(data, ConflictDataset) and len(data) == 10 and data.name == "nqswap"

import json

import pytest

from core import data
from core.errors import DataError


def test_builtin_domains_and_probes():
    assert {"legal", "financial", "medical", "code"} <= set(data.list_domains())
    assert len(data.load_probe("general")) >= 200
    assert len(data.load_probe("paper-8")) == 8
    cats = set(data.probe_categories("general"))
    assert {"science", "geography", "history", "arithmetic", "language", "everyday"} <= cats
    assert len(set(data.load_probe("general"))) == len(data.load_probe("general"))


def test_the_general_probe_s_former_name_loads_the_same_statements():
    """'general-200' held 213 statements and was renamed 'general'; runs stored and spec files
    written under the old name (data/reference/xdomain_smollm2_cpu.json) still load it."""
    assert data.probe_name("general-200") == "general" and data.probe_name("paper-8") == "paper-8"
    assert data.load_probe("general-200") == data.load_probe("general")
    assert data.probe_categories("general-200") == data.probe_categories("general")
    assert len(data.load_probe("general")) == 213
    assert "general" in data.list_probes() and "general-200" not in data.list_probes()
    with pytest.raises(DataError, match="unknown probe 'nope'"):
        data.load_probe("nope")
    with pytest.raises(DataError, match="unknown probe"):
        data.load_probe("smoke")


@pytest.mark.parametrize("construction", ["varied", "paper"])
def test_samples_are_deterministic_and_nested(construction):
    a = data.domain_samples("legal", 50, construction, seed=3)
    assert a == data.domain_samples("legal", 50, construction, seed=3)
    assert data.domain_samples("legal", 120, construction, seed=3)[:50] == a
    assert len(a) == 50 and all(isinstance(s, str) and s for s in a)


def test_paper_construction_prefixes_and_lowercases():
    dom = data.load_domain("financial")
    s = data.domain_samples("financial", 25, "paper")
    assert s[:10] == list(dom.paper_templates)
    assert s[10] == dom.paper_prefixes[1] + dom.paper_templates[0].lower()


def test_eval_split_is_fixed_and_mostly_unseen():
    ev = data.domain_eval("legal", 50)
    assert ev == data.domain_eval("legal", 50) and len(set(ev)) == 50
    train = set(data.domain_samples("legal", 50, "varied", seed=42))
    assert len(set(ev) & train) <= 5


def test_unknown_domain_is_clear():
    with pytest.raises(DataError, match="unknown domain 'space'"):
        data.load_domain("space")
    with pytest.raises(DataError, match="not a valid domain name"):
        data.load_domain("../etc/passwd")


GOOD = "\n".join(f"sentence number {i} about a topic" for i in range(20)).encode()


@pytest.mark.parametrize(
    "name, payload, fragment",
    [
        ("a.txt", b"", "empty"),
        ("a.txt", b"\x00\x01\x02binary", "binary"),
        ("a.txt", "caf\u00e9".encode("latin-1") * 20, "not UTF-8"),
        ("a.txt", b"x" * (data.MAX_UPLOAD_BYTES + 1), "limit"),
        ("a.txt", b"y" * (data.MAX_LINE_CHARS + 1), "characters"),
        ("a.txt", b"same line\n" * 50, "distinct"),
        ("a.csv", b"body\nhello\n", "'text' column"),
        ("a.jsonl", b'{"text": "ok"}\n{broken\n', "line 2 is not valid JSON"),
        ("a.jsonl", b'{"txt": "ok"}\n', '"text"'),
        ("a.pdf", GOOD, "unsupported"),
        ("a.txt", b"\x1b[31mred\n" * 20, "control characters"),
    ],
)
def test_upload_validation(name, payload, fragment):
    with pytest.raises(DataError, match=fragment):
        data.parse_upload(name, payload)


def test_upload_formats_and_saved_domain(lab_home):
    rows = [f"clause {i} binds the parties" for i in range(30)]
    assert data.parse_upload("d.txt", "\n".join(rows).encode()) == rows
    csv = "id,text\n" + "\n".join(f"{i},{r}" for i, r in enumerate(rows))
    assert data.parse_upload("d.csv", csv.encode()) == rows
    jl = "\n".join(json.dumps({"text": r}) for r in rows)
    assert data.parse_upload("d.jsonl", jl.encode()) == rows
    data.save_uploaded_domain("contracts", rows)
    assert "contracts" in data.list_domains()
    assert len(data.domain_samples("contracts", 40)) == 40
    assert set(data.domain_eval("contracts", 100)).isdisjoint(data.domain_samples("contracts", 24))
    with pytest.raises(DataError, match="built-in"):
        data.save_uploaded_domain("legal", rows)

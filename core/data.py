"""Domains, probes and smoke prompts are data files under data/; this module reads them and turns
a domain into a reproducible list of training sentences."""

from __future__ import annotations

import csv
import io
import json
import random
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import DataError
from .paths import lab_home

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
EVAL_SEED = 1_234_567  # the held-out split is the same for every run, so runs are comparable
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    templates: tuple[str, ...]
    slots: dict
    prefixes: tuple[str, ...]
    paper_templates: tuple[str, ...]
    paper_prefixes: tuple[str, ...]
    # Uploaded domains carry fixed sentences instead of templates.
    sentences: tuple[str, ...] = ()
    eval_sentences: tuple[str, ...] = ()


def domain_dirs() -> list[Path]:
    return [DATA_DIR / "domains", lab_home() / "domains"]


def list_domains() -> list[str]:
    names = set()
    for d in domain_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.json"))
    return sorted(names, key=lambda n: (n not in ("legal", "financial"), n))


@lru_cache(maxsize=64)
def _load_domain_file(path: str, mtime: float) -> Domain:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"domain file {Path(path).name} could not be read: {e}") from None
    if raw.get("sentences"):
        return Domain(
            name=raw["name"],
            description=raw.get("description", "uploaded"),
            templates=(),
            slots={},
            prefixes=(),
            paper_templates=(),
            paper_prefixes=(),
            sentences=tuple(raw["sentences"]),
            eval_sentences=tuple(raw.get("eval_sentences", ())),
        )
    try:
        dom = Domain(
            name=raw["name"],
            description=raw.get("description", ""),
            templates=tuple(raw["templates"]),
            slots={k: tuple(v) for k, v in raw["slots"].items()},
            prefixes=tuple(raw["prefixes"]),
            paper_templates=tuple(raw["paper_templates"]),
            paper_prefixes=tuple(raw["paper_prefixes"]),
        )
    except KeyError as e:
        raise DataError(f"domain file {Path(path).name} is missing the key {e}") from None
    for t in dom.templates:
        for slot in _SLOT.findall(t):
            if slot not in dom.slots:
                raise DataError(f"domain {dom.name}: template uses unknown slot '{slot}'")
    return dom


def load_domain(name: str) -> Domain:
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", name or ""):
        raise DataError(f"'{name}' is not a valid domain name (letters, digits, - and _)")
    for d in domain_dirs():
        p = d / f"{name}.json"
        if p.is_file():
            return _load_domain_file(str(p), p.stat().st_mtime)
    raise DataError(f"unknown domain '{name}'; available: {', '.join(list_domains())}")


def _fill(template: str, slots: dict, rng: random.Random) -> str:
    return _SLOT.sub(lambda m: rng.choice(slots[m.group(1)]), template)


def _varied(dom: Domain, n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(n):
        prefix = rng.choice(dom.prefixes)
        body = _fill(rng.choice(dom.templates), dom.slots, rng)
        text = prefix + body if prefix else body[0].upper() + body[1:]
        out.append(text + ".")
    return out


def _paper(dom: Domain, n: int) -> list[str]:
    # Seed 000's construction: rotate through base sentences, prefixing and lowercasing them.
    out = []
    t, p = dom.paper_templates, dom.paper_prefixes
    for i in range(n):
        base = t[i % len(t)]
        out.append(base if i < len(t) else p[(i // len(t)) % len(p)] + base.lower())
    return out


def domain_samples(name: str, n: int, construction: str = "varied", seed: int = 0) -> list[str]:
    """The first n training sentences of a domain. Deterministic in (name, n, construction, seed);
    a larger n extends a smaller one's list, so scales are nested like in seed 000."""
    dom = load_domain(name)
    if dom.sentences:
        pool = list(dom.sentences)
        random.Random(seed).shuffle(pool)
        return [pool[i % len(pool)] for i in range(n)]
    if construction == "paper":
        return _paper(dom, n)
    return _varied(dom, n, random.Random(f"train:{name}:{seed}"))


def replay_pool() -> list[str]:
    """General sentences for the replay mitigation; disjoint from every probe (tested)."""
    path = DATA_DIR / "replay" / "general.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def training_samples(
    name: str, n: int, construction: str = "varied", seed: int = 0, replay: float = 0.0
) -> list[str]:
    """A point's training stream: `n` domain samples plus round(replay x n) general sentences
    (the replay of Johnson 2025, silent forgetting), drawn from the replay pool with the point's seed. The trainer shuffles
    the whole stream every epoch, so the general sentences are spread through it."""
    out = domain_samples(name, n, construction, seed)
    k = round(replay * n)
    if k:
        pool = replay_pool()
        random.Random(f"replay:{seed}").shuffle(pool)
        out += [pool[i % len(pool)] for i in range(k)]
    return out


def domain_eval(name: str, n: int, construction: str = "varied") -> list[str]:
    """Held-out domain sentences, identical for every run of the domain.

    'varied': drawn from the templates with a separate random stream, minus any sentence the
    training stream of seed 0 produces in its first 50K. 'paper': seed 000 evaluated on samples of
    its own training data; we draw from the same rotation."""
    dom = load_domain(name)
    if dom.sentences:
        pool = list(dom.eval_sentences) or list(dom.sentences)
        return pool[:n]
    if construction == "paper":
        full = _paper(dom, len(dom.paper_templates) * (len(dom.paper_prefixes) + 1))
        random.Random(EVAL_SEED).shuffle(full)
        return [full[i % len(full)] for i in range(n)]
    rng = random.Random(f"eval:{name}:{EVAL_SEED}")
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n and len(seen) < 50 * n + 1000:
        s = _varied(dom, 1, rng)[0]
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# Former names of probes, kept so that runs stored and specs written under them still load:
# 'general-200' held 213 statements by the time it was renamed 'general'.
PROBE_ALIASES = {"general-200": "general"}


def probe_name(name: str) -> str:
    """A probe's current name: `name` itself, or the probe a former name now stands for."""
    return PROBE_ALIASES.get(name, name)


def list_probes() -> list[str]:
    return sorted(p.stem for p in (DATA_DIR / "probes").glob("*.tsv") if p.stem != "smoke")


def _probe_rows(name: str) -> list[dict[str, str]]:
    name = probe_name(name)
    p = DATA_DIR / "probes" / f"{name}.tsv"
    if not p.is_file() or name == "smoke":
        raise DataError(f"unknown probe '{name}'; available: {', '.join(list_probes())}")
    return _read_tsv(p)


def load_probe(name: str) -> list[str]:
    return [r["text"] for r in _probe_rows(name)]


def spread(n: int, k: int) -> list[int]:
    """Indices of k items spread evenly over n (all n when k is 0 or at least n). The probe and
    the question set are ordered by topic, so an even spread keeps every topic in a subset."""
    if k <= 0 or k >= n:
        return list(range(n))
    return [int((j + 0.5) * n / k) for j in range(k)]


def probe_categories(name: str) -> list[str]:
    return [r["category"] for r in _probe_rows(name)]


@dataclass(frozen=True)
class MCItem:
    question: str
    options: tuple[str, ...]
    answer: int


def load_mc(name: str = "general-mc") -> list[MCItem]:
    """Own-written four-option general-knowledge questions (data/mc/*.tsv)."""
    p = DATA_DIR / "mc" / f"{name}.tsv"
    if not p.is_file():
        raise DataError(f"unknown multiple-choice set '{name}'")
    return [
        MCItem(r["question"], (r["A"], r["B"], r["C"], r["D"]), "ABCD".index(r["answer"]))
        for r in _read_tsv(p)
    ]


def smoke_prompts() -> list[str]:
    return [r["text"] for r in _read_tsv(DATA_DIR / "probes" / "smoke.tsv")]


# -- uploads ------------------------------------------------------------------------------------
MAX_UPLOAD_BYTES = 5 * 1024 * 1024
MAX_LINE_CHARS = 4000
MIN_SENTENCES = 10


def parse_upload(filename: str, payload: bytes) -> list[str]:
    """Turn an uploaded TXT (one sentence per line), CSV (a 'text' column) or JSONL ({"text": ...}
    per line) into a list of sentences, or raise DataError naming the first problem."""
    if not payload:
        raise DataError("the file is empty")
    if len(payload) > MAX_UPLOAD_BYTES:
        raise DataError(
            f"the file is {len(payload) / 1e6:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB"
        )
    if b"\x00" in payload:
        raise DataError("the file looks binary (it contains NUL bytes); upload UTF-8 text")
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"the file is not UTF-8 text (bad byte at position {e.start})") from None
    ext = Path(filename).suffix.lower()
    if ext == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise DataError(f"line {i} is not valid JSON") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise DataError(f'line {i} has no "text" string field')
            rows.append(obj["text"])
    elif ext == ".csv":
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            names = reader.fieldnames
            if not names or "text" not in [c.strip().lower() for c in names]:
                raise DataError("the CSV needs a header row with a 'text' column")
            col = next(c for c in names if c.strip().lower() == "text")
            rows = [r[col] or "" for r in reader]
        except csv.Error as e:
            raise DataError(f"the CSV could not be parsed: {e}") from None
    elif ext == ".txt":
        rows = text.splitlines()
    else:
        raise DataError(f"unsupported file type '{ext or filename}'; use .txt, .csv or .jsonl")
    cleaned = []
    for i, r in enumerate(rows, 1):
        r = unicodedata.normalize("NFC", r).strip()
        if not r:
            continue
        if len(r) > MAX_LINE_CHARS:
            raise DataError(f"row {i} has {len(r):,} characters; the limit is {MAX_LINE_CHARS:,}")
        if any(unicodedata.category(c) == "Cc" and c not in "\t" for c in r):
            raise DataError(f"row {i} contains control characters")
        cleaned.append(r)
    unique = list(dict.fromkeys(cleaned))
    if len(unique) < MIN_SENTENCES:
        raise DataError(
            f"the file has {len(unique)} distinct non-empty rows; at least {MIN_SENTENCES} are needed"
        )
    return unique


def save_uploaded_domain(name: str, sentences: list[str], eval_fraction: float = 0.2) -> Path:
    """Store an uploaded domain under the lab home: the last `eval_fraction` of the rows (after a
    fixed shuffle) are held out for evaluation."""
    if not re.fullmatch(r"[a-z0-9_\-]{1,40}", name):
        raise DataError("domain name: use 1-40 lowercase letters, digits, - or _")
    if (DATA_DIR / "domains" / f"{name}.json").exists():
        raise DataError(f"'{name}' is a built-in domain; choose another name")
    rows = list(sentences)
    random.Random(EVAL_SEED).shuffle(rows)
    k = max(1, int(len(rows) * eval_fraction))
    out = lab_home() / "domains" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "name": name,
                "description": f"uploaded ({len(rows)} rows)",
                "sentences": rows[k:],
                "eval_sentences": rows[:k],
            },
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    return out

"""Skills declared in YAML, so a user adds a skill without writing Python.

`load_catalogue(paths)` reads one or more skill files into the `Catalogue` an update passes to its
stages. A file may also pull in a generated skill with `generator: MODULE:ID`: skill ID of the
`SKILLS` mapping of the Python module MODULE (the demo world's: `generator: demo_world:add`, see
`configs/skills/demo.yaml`). Generated skills stay in Python because their items come from an
unbounded seeded sampler, which YAML cannot express.

A YAML file holds `skills:`, a list of mappings (all paths relative to the YAML file):

    skills:
      - id: add_words                # letters, digits, _ and -
        role: target                 # target (what updates teach) or core (what every update must keep)
        data: {train: add_train.jsonl, heldout: add_heldout.jsonl}   # or {file: all.jsonl, heldout_fraction: 0.25}
        prompt: "What is {a} plus {b}?"   # str.format over a row's fields; default "{prompt}"
        answer_field: answer         # default "answer"
        extract: "after:####"        # strip | last_number | after:<marker> | regex:<pattern>
        verifier: numeric            # exact | numeric | regex | choice
        choices: [A, B, C, D]        # choice only
        answer_pattern: "#### -?\\d+"    # optional: what a well-formed reference answer looks like (data contract)
        chat: true                   # the student's tokenizer must have a chat template (see compat.py)

A YAML skill has the interface of `continual_opd.skills.Skill`, so the stages need no other change. Its
data is finite: `items(split, n)` returns at most what the files hold (generated skills never run out).
"""

import importlib
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from continual_opd.skills import HELDOUT_FRACTION, ROLES, SPLITS, Catalogue, Item, item_id, split_of

VERIFIERS = ("exact", "numeric", "regex", "choice")
_ID = re.compile(r"[A-Za-z0-9_-]+")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_KEYS = {"id", "role", "description", "data", "prompt", "answer_field", "extract", "verifier", "choices",
         "answer_pattern", "chat", "generator"}


class SkillFileError(ValueError):
    """A skill YAML file or one of its data files is wrong; the message names the file and the field."""


# -- answer extraction and verifiers ------------------------------------------------------------------------


def parse_extract(spec: str, where: str = "extract"):
    """Turn an extraction spec into a function completion -> extracted text (None when nothing is found)."""
    if spec == "strip":
        return lambda s: s.strip()
    if spec == "last_number":
        return lambda s: (found[-1] if (found := _NUMBER.findall(s)) else None)
    if spec.startswith("after:") and spec[len("after:"):]:
        marker = spec[len("after:"):]
        return lambda s: s.rsplit(marker, 1)[1].strip() if marker in s else None
    if spec.startswith("regex:"):
        try:
            pattern = re.compile(spec[len("regex:"):])
        except re.error as exc:
            raise SkillFileError(f"{where}: invalid regular expression ({exc})") from None

        def by_regex(s: str):
            m = pattern.search(s)
            return None if m is None else (m.group(1) if m.groups() else m.group(0)).strip()
        return by_regex
    raise SkillFileError(f"{where}: unknown extraction {spec!r}; use strip, last_number, after:<marker> or "
                         "regex:<pattern>")


def _number(text: str | None):
    if text is None:
        return None
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().casefold()


@dataclass(frozen=True)
class YamlSkill:
    """A skill read from YAML: finite items from data files, a prompt template, an extraction and a verifier."""

    id: str
    role: str
    train: tuple[Item, ...] = field(repr=False)
    heldout: tuple[Item, ...] = field(repr=False)
    extract: str = "strip"
    verifier: str = "exact"
    choices: tuple[str, ...] = ()
    answer_pattern: str | None = None
    chat: bool = False
    description: str = ""
    source: str = ""

    def _extracted(self, text: str) -> str | None:
        return parse_extract(self.extract)(text)

    def _reference(self, answer: str) -> str:
        """The reference answer after the same extraction (a GSM8K answer keeps only what follows `####`)."""
        got = self._extracted(answer)
        return answer.strip() if got is None else got

    def _choice(self, text: str | None) -> str | None:
        if text is None:
            return None
        for token in re.findall(r"[A-Za-z0-9]+", text):
            for c in self.choices:
                if token.casefold() == c.casefold():
                    return c
        return None

    def verify(self, output: str, answer: str) -> bool:
        """Strict score of one completion against the reference answer, by the skill's verifier kind."""
        got, ref = self._extracted(output), self._reference(answer)
        if got is None:
            return False
        if self.verifier == "numeric":
            a, b = _number(got), _number(ref)
            return a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b))
        if self.verifier == "regex":
            return re.fullmatch(ref, got) is not None
        if self.verifier == "choice":
            return self._choice(got) is not None and self._choice(got) == self._choice(ref)
        return got == ref

    def verify_lenient(self, output: str, answer: str) -> bool:
        """Lenient score: case and whitespace ignored (numeric, regex and choice are already lenient on format)."""
        if self.verifier != "exact":
            return self.verify(output, answer)
        got = self._extracted(output)
        return got is not None and _norm(got) == _norm(self._reference(answer))

    def well_formed(self, answer: str) -> bool:
        if self.answer_pattern is not None:
            return re.fullmatch(self.answer_pattern, answer) is not None
        ref = self._reference(answer)
        if self.verifier == "numeric":
            return _number(ref) is not None
        if self.verifier == "choice":
            return self._choice(ref) is not None
        return bool(ref)

    def items(self, split: str, n: int, seed: int = 0) -> list[Item]:
        """Up to `n` distinct items of one split, in an order drawn reproducibly from `seed`."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        pool = list(self.train if split == "train" else self.heldout)
        random.Random(f"{self.id}:{split}:{seed}").shuffle(pool)
        return pool[:n]


# -- reading YAML -------------------------------------------------------------------------------------------


def _read_rows(path: Path, where: str) -> list[dict]:
    from datasets import load_dataset

    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(path.suffix)
    if kind is None:
        raise SkillFileError(f"{where}: data file {path} must be .jsonl or .parquet")
    if not path.is_file():
        raise SkillFileError(f"{where}: data file {path} does not exist")
    try:
        return list(load_dataset(kind, data_files=str(path), split="train"))
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a bad file; name the file
        raise SkillFileError(f"{where}: data file {path} cannot be read ({type(exc).__name__}: {exc})") from None


def _items(skill_id: str, rows: list[dict], prompt: str, answer_field: str, where: str) -> list[Item]:
    out: dict[str, Item] = {}
    for i, row in enumerate(rows):
        try:
            text = prompt.format_map(row)
        except (KeyError, IndexError, ValueError) as exc:
            raise SkillFileError(f"{where}.prompt: row {i} does not fill the template {prompt!r} ({exc!r}); "
                                 f"its fields are {sorted(row)}") from None
        if answer_field not in row:
            raise SkillFileError(f"{where}.answer_field: row {i} has no field {answer_field!r}; "
                                 f"its fields are {sorted(row)}")
        out.setdefault(text, Item(item_id(skill_id, text), skill_id, text, str(row[answer_field])))
    return list(out.values())


def _skill_from(entry: dict, base: Path, where: str):
    if not isinstance(entry, dict):
        raise SkillFileError(f"{where}: each skill must be a mapping, not {type(entry).__name__}")
    unknown = set(entry) - _KEYS
    if unknown:
        raise SkillFileError(f"{where}: unknown field(s) {sorted(unknown)}; known fields are {sorted(_KEYS)}")
    sid = entry.get("id")
    if not isinstance(sid, str) or not _ID.fullmatch(sid):
        raise SkillFileError(f"{where}.id: must be letters, digits, '_' or '-' (got {sid!r})")
    where = f"{where} ({sid})"
    if "generator" in entry:
        return _generated(str(entry["generator"]), sid, where)
    role = entry.get("role")
    if role not in ROLES:
        raise SkillFileError(f"{where}.role: must be one of {ROLES} (got {role!r})")
    verifier = entry.get("verifier", "exact")
    if verifier not in VERIFIERS:
        raise SkillFileError(f"{where}.verifier: must be one of {VERIFIERS} (got {verifier!r})")
    extract = str(entry.get("extract", "strip"))
    parse_extract(extract, f"{where}.extract")
    choices = tuple(str(c) for c in entry.get("choices") or ())
    if verifier == "choice" and not choices:
        raise SkillFileError(f"{where}.choices: a choice verifier needs its choices, e.g. [A, B, C, D]")
    data = entry.get("data")
    prompt = str(entry.get("prompt", "{prompt}"))
    answer_field = str(entry.get("answer_field", "answer"))
    if not isinstance(data, dict):
        raise SkillFileError(f"{where}.data: give {{train: FILE, heldout: FILE}} or {{file: FILE, heldout_fraction: F}}")
    if "train" in data or "heldout" in data:
        if not {"train", "heldout"} <= set(data):
            raise SkillFileError(f"{where}.data: give both train and heldout files")
        train = _items(sid, _read_rows(base / str(data["train"]), f"{where}.data.train"), prompt, answer_field, where)
        heldout = _items(sid, _read_rows(base / str(data["heldout"]), f"{where}.data.heldout"), prompt,
                         answer_field, where)
        overlap = {it.prompt for it in train} & {it.prompt for it in heldout}
        if overlap:
            raise SkillFileError(f"{where}.data: {len(overlap)} prompt(s) are in both train and heldout, "
                                 f"e.g. {next(iter(overlap))!r}")
    elif "file" in data:
        frac = float(data.get("heldout_fraction", HELDOUT_FRACTION))
        if not 0 < frac < 1:
            raise SkillFileError(f"{where}.data.heldout_fraction: must be between 0 and 1 (got {frac})")
        every = _items(sid, _read_rows(base / str(data["file"]), f"{where}.data.file"), prompt, answer_field, where)
        held = {it.prompt for it in every if split_of(sid, it.prompt, frac) == "heldout"}
        train = [it for it in every if it.prompt not in held]
        heldout = [it for it in every if it.prompt in held]
    else:
        raise SkillFileError(f"{where}.data: give {{train: FILE, heldout: FILE}} or {{file: FILE, heldout_fraction: F}}")
    return YamlSkill(sid, role, tuple(train), tuple(heldout), extract, verifier, choices,
                     entry.get("answer_pattern"), bool(entry.get("chat", False)), str(entry.get("description", "")),
                     where)


def load_skill_file(path: str | Path) -> dict:
    """The skills one YAML file declares, by id, in file order."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SkillFileError(f"skill file {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SkillFileError(f"skill file {path} is not valid YAML: {exc}") from None
    if not isinstance(tree, dict) or not isinstance(tree.get("skills"), list) or not tree["skills"]:
        raise SkillFileError(f"skill file {path}: needs a top-level 'skills:' list with at least one skill")
    out: dict = {}
    for i, entry in enumerate(tree["skills"]):
        skill = _skill_from(entry, path.parent, f"{path}: skills[{i}]")
        if skill.id in out:
            raise SkillFileError(f"{path}: skills[{i}].id: {skill.id!r} is declared twice")
        out[skill.id] = skill
    return out


def _generated(spec: str, sid: str, where: str):
    """`MODULE:ID`: skill ID of MODULE's `SKILLS` mapping (a plugin reference, like an entry point)."""
    module, _, name = spec.partition(":")
    try:
        found = importlib.import_module(module).SKILLS[name] if module and name else None
    except (ImportError, AttributeError, KeyError):
        found = None
    if found is None:
        raise SkillFileError(f"{where}.generator: {spec!r} is not MODULE:ID naming a skill in MODULE.SKILLS "
                             "(the demo world's skills: demo_world:add, demo_world:copy, ...)")
    if name != sid:
        raise SkillFileError(f"{where}.generator: a generated skill keeps its id ({name!r}, not {sid!r})")
    return found


@lru_cache(maxsize=8)
def _load(paths: tuple[str, ...], stamps: tuple[float, ...]) -> Catalogue:
    merged: dict = {}
    for p in paths:
        for sid, skill in load_skill_file(p).items():
            if sid in merged:
                raise SkillFileError(f"skill {sid!r} is declared in more than one file ({p} and another)")
            merged[sid] = skill
    if not any(s.role == "target" for s in merged.values()):
        raise SkillFileError(f"skill files {', '.join(paths)} declare no target skill")
    return Catalogue(merged.values(), sources=paths)


def load_catalogue(paths: Sequence[str | Path]) -> Catalogue:
    """The skills these YAML files declare, as one catalogue (cached until a file changes)."""
    if not paths:
        raise SkillFileError("no skill files given")
    resolved = tuple(str(Path(p).expanduser().resolve()) for p in paths)
    for given, path in zip(paths, resolved, strict=True):
        if not Path(path).is_file():
            raise SkillFileError(f"skill file {given} does not exist")
    return _load(resolved, tuple(Path(p).stat().st_mtime for p in resolved))

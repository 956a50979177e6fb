"""The skill catalogue: skills declared in YAML, so a user adds a skill without writing Python.

Every stage finds skills here (`SKILLS`, `get_skill`, `CORE_SKILLS`, `TARGET_SKILLS`, `Item`). Which
skills exist is decided at lookup time by the environment variable `CONTINUAL_OPD_SKILLS` (YAML paths,
separated by `os.pathsep`), which the flow sets from `UpdateSettings.skills`:

- unset or empty: the demo world's skills (`demo_world.skills`), exactly as before;
- set: only the skills those files declare. A file may pull a demo skill in with `generator: demo_world:<id>`
  (see `configs/skills/demo.yaml`); generated skills stay in Python because their items are drawn from an
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

A YAML skill has the same interface as `demo_world.skills.Skill`, so the stages need no other change.
Its data is finite: `items(split, n)` returns at most what the files hold (the demo samplers never run out).
"""

import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from demo_world import skills as demo
from demo_world.skills import REFUSAL, SPLITS, Item, item_id, split_of  # noqa: F401 - re-exported

ENV_VAR = "CONTINUAL_OPD_SKILLS"
ROLES = ("target", "core")
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
        gen = str(entry["generator"])
        module, _, name = gen.partition(":")
        if module != "demo_world" or name not in demo.SKILLS:
            raise SkillFileError(f"{where}.generator: {gen!r} is not demo_world:<id> with id one of "
                                 f"{', '.join(demo.SKILLS)}")
        if name != sid:
            raise SkillFileError(f"{where}.generator: a generated skill keeps its demo id ({name!r}, not {sid!r})")
        return demo.SKILLS[name]
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
        frac = float(data.get("heldout_fraction", demo.HELDOUT_FRACTION))
        if not 0 < frac < 1:
            raise SkillFileError(f"{where}.data.heldout_fraction: must be between 0 and 1 (got {frac})")
        every = _items(sid, _read_rows(base / str(data["file"]), f"{where}.data.file"), prompt, answer_field, where)
        held = {it.prompt for it in every if _heldout_by_hash(sid, it.prompt, frac)}
        train = [it for it in every if it.prompt not in held]
        heldout = [it for it in every if it.prompt in held]
    else:
        raise SkillFileError(f"{where}.data: give {{train: FILE, heldout: FILE}} or {{file: FILE, heldout_fraction: F}}")
    return YamlSkill(sid, role, tuple(train), tuple(heldout), extract, verifier, choices,
                     entry.get("answer_pattern"), bool(entry.get("chat", False)), str(entry.get("description", "")),
                     where)


def _heldout_by_hash(skill_id: str, prompt: str, fraction: float) -> bool:
    """The split is a pure function of the prompt (as in the demo world): no prompt is ever in both splits."""
    import hashlib

    digest = hashlib.sha256(f"{skill_id}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def load_skill_file(path: str | Path) -> dict:
    """The skills one YAML file declares, by id, in file order."""
    import yaml

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


@lru_cache(maxsize=8)
def _load(paths: tuple[str, ...], stamps: tuple[float, ...]) -> dict:
    merged: dict = {}
    for p in paths:
        for sid, skill in load_skill_file(p).items():
            if sid in merged:
                raise SkillFileError(f"skill {sid!r} is declared in more than one file ({p} and another)")
            merged[sid] = skill
    if not any(s.role == "target" for s in merged.values()):
        raise SkillFileError(f"skill files {', '.join(paths)} declare no target skill")
    return merged


def catalogue_paths() -> list[str]:
    return [p for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]


def catalogue() -> dict:
    """The active skills, by id: the YAML files named in $CONTINUAL_OPD_SKILLS, else the demo world's."""
    paths = tuple(str(Path(p).resolve()) for p in catalogue_paths())
    if not paths:
        return demo.SKILLS
    stamps = tuple(Path(p).stat().st_mtime if Path(p).exists() else -1.0 for p in paths)
    return _load(paths, stamps)


def use_catalogue(paths: Sequence[str]) -> None:
    """Make these YAML files the active skills of this process (and its children); empty = the demo world."""
    for p in paths:
        if not Path(p).is_file():
            raise SkillFileError(f"skill file {p} does not exist")
    os.environ[ENV_VAR] = os.pathsep.join(str(Path(p).resolve()) for p in paths)
    catalogue()  # fail now, with the file and field, rather than inside a stage


class _LiveSkills(Mapping):
    """`SKILLS`: a read-only view of the active catalogue, resolved at every lookup."""

    def __getitem__(self, key):
        return catalogue()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(catalogue())

    def __len__(self) -> int:
        return len(catalogue())

    def __repr__(self) -> str:
        return f"SKILLS({', '.join(self)})"


class _LiveIds(Sequence):
    """`CORE_SKILLS` / `TARGET_SKILLS`: the active catalogue's skill ids of one role, resolved at every use."""

    def __init__(self, role: str):
        self.role = role

    def _ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in catalogue().values() if s.role == self.role)

    def __getitem__(self, i):
        return self._ids()[i]

    def __len__(self) -> int:
        return len(self._ids())

    def __repr__(self) -> str:
        return repr(self._ids())


SKILLS = _LiveSkills()
CORE_SKILLS = _LiveIds("core")
TARGET_SKILLS = _LiveIds("target")


def get_skill(skill_id: str):
    skills = catalogue()
    try:
        return skills[skill_id]
    except KeyError:
        where = f" (skill files: {', '.join(catalogue_paths())})" if catalogue_paths() else ""
        raise KeyError(f"unknown skill {skill_id!r}; known skills: {', '.join(skills)}{where}") from None

"""The small, serialisable records that stages pass to each other (docs/design.md).

Records hold paths, registry versions, digests and numbers, never live objects: that lets Prefect cache
a finished stage by its inputs, lets a rerun after a crash skip it, and lets a test call one stage alone.
"""

from pydantic import BaseModel, ConfigDict, Field


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelRef(Record):
    """A registered model version and the local folder that holds its weights."""

    name: str = Field(description="Registered model name.")
    version: str = Field(description="Registered model version.")
    folder: str = Field(description="Local model folder.")


class AcceptedBatch(Record):
    """A batch that passed the data contract."""

    path: str = Field(description="Where the accepted batch file now lives (processed/).")
    digest: str = Field(description="sha256 of the batch's canonical rows.")
    skill: str = Field(description="The target skill the batch teaches.")
    rows: int = Field(description="Number of rows.")
    contract_version: str = Field(description="Version of the data contract that accepted it.")
    warnings: tuple[str, ...] = Field(default=(), description="Non-fatal findings (distribution shift).")


class Teacher(Record):
    """A specialist teacher trained by RL and past the teacher gate."""

    model: ModelRef
    skill: str
    initial_accuracy: float = Field(description="Held-out accuracy of the initial model on the skill.")
    accuracy: float = Field(description="Held-out accuracy of the teacher (best checkpoint).")
    steps: int = Field(description="RL steps taken to the best checkpoint.")
    reused: bool = Field(default=False, description="True when an identical earlier teacher was reused.")
    run_id: str = Field(default="", description="MLflow run of the teacher training.")


class Candidate(Record):
    """A student produced by distillation (or a baseline method), registered with alias `candidate`."""

    model: ModelRef
    method: str
    parent_version: str
    teacher_version: str
    metrics: dict[str, float] = Field(default_factory=dict)
    run_id: str = ""


class SuiteStats(Record):
    suite: str
    n: int
    champion_acc: float
    candidate_acc: float
    delta: float
    delta_ci_low: float
    delta_ci_high: float
    mcnemar_p: float
    champion_lenient_acc: float
    candidate_lenient_acc: float


class EvalReport(Record):
    """Champion and candidate on every suite, paired item by item."""

    champion_version: str
    candidate_version: str
    suites: dict[str, SuiteStats]
    kl_core: float = Field(description="drift/kl_core: mean per-token KL(champion || candidate) on core prompts.")
    items_path: str = Field(description="Local path of the per-item jsonl (also the MLflow artifact gate/items.jsonl).")
    run_id: str = ""
    target_skill: str = Field(default="", description="The skill the update teaches (the gate's {target} suite).")

    def metrics(self) -> dict[str, float]:
        """The gate metrics under their shared names (docs/design.md), and the lenient accuracies that tell a
        format slip from lost skill (`<suite>/champion_lenient_acc`, `<suite>/candidate_lenient_acc`)."""
        out: dict[str, float] = {"drift/kl_core": self.kl_core}
        for name, s in self.suites.items():
            for key in ("champion_acc", "candidate_acc", "delta", "delta_ci_low", "delta_ci_high", "mcnemar_p",
                        "champion_lenient_acc", "candidate_lenient_acc"):
                out[f"{name}/{key}"] = getattr(s, key)
        return out


class Decision(Record):
    """What the gate decided, and why."""

    promoted: bool
    reasons: tuple[str, ...]
    policy_version: str
    candidate_version: str
    champion_version: str
    audit_run_id: str = ""


class UpdateOutcome(Record):
    """Everything one finished update produced, for the summary and for tests."""

    batch: AcceptedBatch
    teacher: Teacher
    candidate: Candidate
    report: EvalReport
    decision: Decision
    mlflow_run_id: str


class SkippedBatch(Record):
    """An update that did nothing because its rows were already trained on (recognised by digest), or because
    another worker took the batch from a shared inbox first (digest empty: the file was gone)."""

    path: str
    digest: str
    reason: str

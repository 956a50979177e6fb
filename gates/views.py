"""What `continual-opd status` and `continual-opd history` print: aliases, versions, decisions, the matrix.

Read-only views over the registry, the audit trail (`gates.audit`) and the accuracy matrix.
"""

import time

from continual_opd import accuracy_matrix, registry
from continual_opd.home import Home, current_home
from gates.audit import GATE_EXPERIMENT


def _decision_runs(model_name: str, max_results: int = 1000):
    client = registry.client()
    exp = client.get_experiment_by_name(GATE_EXPERIMENT)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.model_name = '{model_name}'",
                              order_by=["attributes.start_time DESC"], max_results=max_results)


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def _decision_line(run) -> str:
    t = run.data.tags
    first = t.get("gate_reasons", "").split(" | ")[0]
    return (f"{_when(run.info.start_time)}  {t.get('event', '?'):8s} {t.get('gate_decision', '?'):9s} "
            f"v{t.get('candidate_version', '?')} vs v{t.get('champion_version') or 'none'}  "
            f"[{t.get('policy_version', '')}]  {first[:160]}")


def status_text(model_name: str = registry.STUDENT_MODEL) -> str:
    """Champion, previous champion, candidates and the last decisions."""
    client = registry.client()
    aliases = registry.aliases(model_name)
    if not aliases and not client.search_model_versions(f"name='{model_name}'"):
        return f"{model_name}: no registered versions. Run `continual-opd bootstrap` first."
    lines = [f"model {model_name}"]
    for alias in (registry.CHAMPION, registry.PREVIOUS_CHAMPION, registry.CANDIDATE):
        version = aliases.get(alias)
        if version is None:
            lines.append(f"  {alias:18s} -")
            continue
        tags = registry.get_version(model_name, version).tags
        lines.append(f"  {alias:18s} v{version}  method={tags.get('method', '?')} "
                     f"parent=v{tags.get('parent_version', '?')} gate={tags.get('gate_decision', 'undecided')}")
    versions = sorted(client.search_model_versions(f"name='{model_name}'"), key=lambda v: int(v.version))
    undecided = [str(v.version) for v in versions if "gate_decision" not in v.tags]
    lines.append(f"  undecided candidates: {', '.join('v' + v for v in undecided) or 'none'}")
    lines.append("versions:")
    for v in versions[-10:]:
        mark = "".join(f" @{a}" for a, n in aliases.items() if n == str(v.version))
        lines.append(f"  v{str(v.version):4s} {v.tags.get('method', '?'):22s} "
                     f"{v.tags.get('gate_decision', 'undecided'):10s}"
                     f"{mark}")
    runs = _decision_runs(model_name, 5)
    lines.append("last decisions:")
    lines += [f"  {_decision_line(r)}" for r in runs] or ["  none yet"]
    return "\n".join(lines)


def history_text(model_name: str = registry.STUDENT_MODEL, home: Home | None = None) -> str:
    """The decision log (oldest first) and the accuracy matrix with ACC and BWT."""
    home = home or current_home()
    runs = list(reversed(_decision_runs(model_name)))
    lines = [f"decision log of {model_name} (MLflow experiment {GATE_EXPERIMENT}):"]
    lines += [f"  {_decision_line(r)}" for r in runs] or ["  no decisions yet"]
    model = accuracy_matrix.load(home, model_name)
    lines += ["", "accuracy matrix (rows: champions in order; cells: strict accuracy %):",
              accuracy_matrix.render_markdown(model_name, model)]
    return "\n".join(lines)

"""The scheduled update: every new batch in the inbox, oldest first, one continual update each.

The inbox is the home's, or that of the shared store in `settings.batches` (a folder or an fsspec URL such
as `s3://bucket/continual-opd`, see `continual_opd.batch_store`), where batches go on to `processed/` and
`quarantine/` too. A batch that fails its contract is quarantined and the night goes on with the next; an
empty inbox is a no-op that says so. Updates never interleave: each takes the update lock (see
continual_update), which spans every worker of a Prefect server.
"""

from prefect import flow, get_run_logger
from pydantic import Field

from continual_opd.batch_store import BatchStore, name_of
from continual_opd.config import StrictConfig
from continual_opd.home import current_home, prepare_stores
from continual_opd.records import SkippedBatch, UpdateOutcome
from flows.continual_update import continual_update
from flows.params import UpdateParams, UpdateSettings


class NightlyParams(StrictConfig):
    settings: UpdateSettings = Field(default_factory=UpdateSettings, description="Settings for every update.")
    max_batches: int = Field(10, ge=1, description="Process at most this many inbox batches in one night.")


@flow(name="nightly-updates")
def nightly_updates(params: NightlyParams = NightlyParams()) -> list[dict]:
    """Run one continual update per inbox batch, oldest first."""
    logger = get_run_logger()
    store = BatchStore.at(params.settings.batches, prepare_stores(current_home()))
    batches = store.list_inbox()[: params.max_batches]
    if not batches:
        logger.info(f"inbox {store.inbox} is empty: nothing to update")
        return []
    results = []
    for path in batches:
        update = UpdateParams(batch=path, **params.settings.model_dump())
        state = continual_update(update, return_state=True)
        result = state.result(raise_on_failure=False)
        if isinstance(result, UpdateOutcome):
            outcome = "promoted" if result.decision.promoted else "rejected"
        elif isinstance(result, SkippedBatch):
            outcome = "skipped: already trained on" if result.digest else "skipped: another worker took it"
        else:
            outcome = f"failed: {type(result).__name__}: {str(result)[:300]}"
        logger.info(f"{name_of(path)}: {outcome}")
        results.append({"batch": name_of(path), "outcome": outcome})
    return results

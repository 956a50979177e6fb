"""Run the contract's GX suites on a derived frame, with an ephemeral context that writes nothing but Data Docs.

The chain is GX 1.x's in-code one (docs/library-notes.md): an ephemeral context, a pandas data source, a dataframe
asset, a whole-dataframe batch definition, the suites, validation definitions and one checkpoint whose
`UpdateDataDocsAction` renders Data Docs. Suites, validation definitions and checkpoints live in memory
(the JSON files are the source of truth); only validation results are kept on disk, in the home, so
the Data Docs index lists every batch ever validated there. Failing rows are reported by the frame's
`row` column. great_expectations is imported here, inside the function: it costs 2+ seconds.
"""

import re
from pathlib import Path

from data_contracts import suite_json

RESULT_FORMAT = {"result_format": "SUMMARY", "unexpected_index_column_names": ["row"],
                 "partial_unexpected_count": 20, "return_unexpected_index_query": False}
DOCS_SITE = "continual_opd"


def _context(docs_dir: Path | None, results_dir: Path | None):
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    defaults = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    stores = dict(defaults.stores)
    if results_dir is not None:
        stores[defaults.validation_results_store_name] = {
            "class_name": "ValidationResultsStore",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(results_dir)},
        }
    sites = {}
    if docs_dir is not None:
        sites[DOCS_SITE] = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
    config = DataContextConfig(store_backend_defaults=defaults, stores=stores, data_docs_sites=sites,
                               analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(mode="ephemeral", project_config=config)


def load_suite(name: str, parameters: dict):
    """The suite from its JSON with its parameters filled in; an expectation GX cannot build is an error
    here, not silently dropped."""
    import great_expectations as gx

    spec = resolve_parameters(suite_json(name), parameters)
    suite = gx.ExpectationSuite(**spec)  # GX logs and *drops* an invalid expectation: count them
    if len(suite.expectations) != len(spec["expectations"]):
        built = {e.meta.get("check") for e in suite.expectations}
        lost = [e["meta"]["check"] for e in spec["expectations"] if e["meta"]["check"] not in built]
        raise ValueError(f"data_contracts/{name}.json: GX rejected the expectation(s) {lost}; fix their kwargs")
    return suite


def resolve_parameters(spec, parameters: dict):
    """`spec` with every {"$PARAMETER": name} replaced by its value.

    Data Docs render an expectation's kwargs as written (a KL chart of `{"$PARAMETER": ...}` fails to
    render), so the values are put in before the suite is built: the docs and the stored results then
    show the bounds, skill lists and reference partitions that were actually asserted.
    """
    if isinstance(spec, dict):
        if set(spec) == {"$PARAMETER"}:
            try:
                return parameters[spec["$PARAMETER"]]
            except KeyError:
                raise ValueError(f"the contract needs the parameter {spec['$PARAMETER']!r}, which was not given") from None
        return {k: resolve_parameters(v, parameters) for k, v in spec.items()}
    if isinstance(spec, list):
        return [resolve_parameters(v, parameters) for v in spec]
    return spec


def jsonable(value):
    """GX result dicts still hold numpy scalars; make them plain JSON values."""
    import json

    def default(obj):
        if hasattr(obj, "item"):
            return obj.item()
        if hasattr(obj, "isoformat"):
            return obj.isoformat()
        return str(obj)

    return json.loads(json.dumps(value, default=default))


def run_suites(frame, suites: list[str], parameters: dict, batch_name: str, docs_dir: Path | None = None,
               results_dir: Path | None = None) -> tuple[list[dict], str | None]:
    """Validate `frame` against each named suite with `parameters` filled in.

    Returns the GX results as JSON dicts, in the order of `suites`, and the Data Docs index (or None).
    """
    import datetime as dt

    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier

    context = _context(docs_dir, results_dir)
    asset_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", batch_name) or "batch"
    asset = context.data_sources.add_pandas("batches").add_dataframe_asset(asset_name)
    batch_definition = asset.add_batch_definition_whole_dataframe("whole-batch")
    definitions = [
        context.validation_definitions.add(gx.ValidationDefinition(
            name=f"{name}-{asset_name}", data=batch_definition, suite=context.suites.add(load_suite(name, parameters))))
        for name in suites
    ]
    checkpoint = context.checkpoints.add(gx.Checkpoint(name="data-contract", validation_definitions=definitions,
                                                       result_format=RESULT_FORMAT))
    run_id = RunIdentifier(run_name=asset_name, run_time=dt.datetime.now(dt.timezone.utc))
    result = checkpoint.run(batch_parameters={"dataframe": frame}, run_id=run_id)
    by_suite = {r.suite_name: jsonable(r.to_json_dict()) for r in result.run_results.values()}
    index = None
    if docs_dir is not None:
        # One build for all of this run's results (UpdateDataDocsAction would rebuild the site per suite).
        context.build_data_docs(site_names=[DOCS_SITE], resource_identifiers=list(result.run_results))
        index = str(Path(docs_dir) / "index.html")
    return [by_suite[name] for name in suites], index

"""Batches in a shared S3-compatible bucket (moto's S3 server on localhost stands in for MinIO or S3).

The inbox lists oldest first and skips hidden files; the data contract reads a batch behind a URL and
files it in the bucket: accepted into `processed/`, rejected into `quarantine/` with its report, a re-sent
copy into `processed/duplicates/`. The nightly flow runs over a bucket's inbox.
"""

import json
import logging
import time

import pytest

from continual_opd.batch_io import write_jsonl
from continual_opd.batch_store import BatchStore, check_location, local_copy
from demo_world.skills import CATALOGUE
from tasks.validate import ContractConfig, ContractViolation, DuplicateBatch, validate_batch
from tests.helpers.environ import environment

pytest.importorskip("s3fs", reason="S3 batch stores need s3fs: pip install -e '.[server]'")
moto_server = pytest.importorskip("moto.server", reason="the S3 stand-in needs moto: pip install -e '.[test]'")

BUCKET = "continual-opd-batches"
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def bucket():
    """`s3://continual-opd-batches` on a moto S3 server on 127.0.0.1; credentials and endpoint in the environment."""
    import fsspec

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with environment(**S3_ENV, AWS_ENDPOINT_URL=f"http://{host}:{port}"):
            fs = fsspec.filesystem("s3", skip_instance_cache=True)
            fs.mkdir(BUCKET)
            yield fs
    finally:
        server.stop()


def put(fs, key: str, items, tmp_path) -> str:
    local = write_jsonl(items, tmp_path / key.replace("/", "_"))
    fs.put_file(str(local), f"{BUCKET}/{key}")
    return f"s3://{BUCKET}/{key}"


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    from continual_opd.modelio import save_model_atomic
    from demo_world.model import build_tiny_model
    from demo_world.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    return str(save_model_atomic(build_tiny_model(tokenizer), tokenizer, tmp_path_factory.mktemp("student") / "m"))


def test_the_inbox_in_a_bucket_lists_oldest_first_and_files_move_or_copy(bucket, fresh_world, tmp_path):
    store = BatchStore(f"s3://{BUCKET}/listing")
    assert store.list_inbox() == []
    for name in ("b.jsonl", ".hidden.tmp", "a.jsonl"):
        bucket.pipe_file(f"{BUCKET}/listing/inbox/{name}", name.encode())
        time.sleep(1.1)  # S3 keeps modification times to the second
    assert store.list_inbox() == [f"s3://{BUCKET}/listing/inbox/b.jsonl", f"s3://{BUCKET}/listing/inbox/a.jsonl"]

    local = local_copy(store.list_inbox()[0], fresh_world)
    assert local.read_bytes() == b"b.jsonl" and fresh_world.root in local.parents
    moved = store.file_away(store.list_inbox()[0], store.processed)
    assert moved == f"s3://{BUCKET}/listing/processed/b.jsonl"
    assert not bucket.exists(f"{BUCKET}/listing/inbox/b.jsonl") and bucket.cat_file(moved) == b"b.jsonl"
    # a file from outside the inbox (here: the user's disk) is copied, under a free name
    mine = tmp_path / "b.jsonl"
    mine.write_text("mine")
    copied = store.file_away(mine, store.processed)
    assert copied.startswith(f"s3://{BUCKET}/listing/processed/b.") and copied != moved
    assert mine.read_text() == "mine" and bucket.cat_file(copied) == b"mine"


def test_the_contract_files_batches_in_the_bucket(bucket, fresh_world, tokenizer_folder, tmp_path):
    store = BatchStore(f"s3://{BUCKET}/contract")
    good = put(bucket, "contract/inbox/add.jsonl", CATALOGUE["add"].items("train", 64, seed=71), tmp_path)
    accepted = validate_batch(good, ContractConfig(), CATALOGUE, 40, tokenizer_folder, fresh_world, store=store)
    assert accepted.path == f"s3://{BUCKET}/contract/processed/add.jsonl" and bucket.exists(accepted.path)
    assert not bucket.exists(good)

    again = put(bucket, "contract/inbox/add-again.jsonl", CATALOGUE["add"].items("train", 64, seed=71), tmp_path)
    with pytest.raises(DuplicateBatch) as caught:
        validate_batch(again, ContractConfig(), CATALOGUE, 40, tokenizer_folder, fresh_world, store=store)
    assert caught.value.moved_to == f"s3://{BUCKET}/contract/processed/duplicates/add-again.jsonl"
    assert caught.value.entry["path"] == accepted.path and not bucket.exists(again)

    items = CATALOGUE["add"].items("train", 64, seed=72)
    bad = put(bucket, "contract/inbox/bad.jsonl", [*items[:-1], items[0]], tmp_path)  # a repeated id
    with pytest.raises(ContractViolation) as caught:
        validate_batch(bad, ContractConfig(), CATALOGUE, 40, tokenizer_folder, fresh_world, store=store)
    quarantined = f"s3://{BUCKET}/contract/quarantine/bad.jsonl"
    assert caught.value.quarantined == quarantined and str(caught.value).startswith(f"batch file {bad}")
    assert bucket.exists(quarantined) and not bucket.exists(bad)
    report = json.loads(bucket.cat_file(f"{quarantined}.report.json"))
    assert report["report"]["quarantined"] == quarantined and not report["report"]["success"]


def test_a_location_without_its_driver_is_refused_when_the_settings_load():
    from flows.params import ParamsError, load_params

    assert check_location(f"s3://{BUCKET}/x") == f"s3://{BUCKET}/x"
    with pytest.raises(ParamsError, match="batches: .*'nosuchfs://x' cannot be opened: Protocol not known"):
        load_params("b.jsonl", overrides=["batches=nosuchfs://x"])


@pytest.mark.slow
def test_the_nightly_flow_reads_a_bucket_inbox(bucket, home, champion, tmp_path):
    """A re-sent batch is skipped and a bad one quarantined, both in the bucket, and the night goes on."""
    from flows.nightly import NightlyParams, nightly_updates
    from flows.params import UpdateSettings

    root = f"s3://{BUCKET}/nightly"
    store = BatchStore(root)
    first = put(bucket, "nightly/inbox/first.jsonl", CATALOGUE["sub"].items("train", 64, seed=81), tmp_path)
    validate_batch(first, ContractConfig(), CATALOGUE, 40, champion.folder, home, store=store)
    put(bucket, "nightly/inbox/resent.jsonl", CATALOGUE["sub"].items("train", 64, seed=81), tmp_path)
    time.sleep(1.1)
    put(bucket, "nightly/inbox/bad.jsonl", [*CATALOGUE["sub"].items("train", 8, seed=82), CATALOGUE["add"].items(
        "train", 1, seed=82)[0]], tmp_path)  # two target skills in one batch

    staging = home.root / "staging"
    before = set(staging.rglob("*")) if staging.exists() else set()
    results = nightly_updates(NightlyParams(settings=UpdateSettings(batches=root)))

    assert [r["batch"] for r in results] == ["resent.jsonl", "bad.jsonl"]
    assert results[0]["outcome"] == "skipped: already trained on"
    assert results[1]["outcome"].startswith("failed: ContractViolation")
    assert store.list_inbox() == []
    assert bucket.exists(f"{BUCKET}/nightly/processed/duplicates/resent.jsonl")
    assert bucket.exists(f"{BUCKET}/nightly/quarantine/bad.jsonl")
    assert bucket.exists(f"{BUCKET}/nightly/quarantine/bad.jsonl.report.md")
    assert (set(staging.rglob("*")) if staging.exists() else set()) <= before, "the flow left local copies behind"

    # a night on another worker listed the same inbox, then waited for the update lock: the batch is gone by then
    from flows.continual_update import continual_update
    from flows.params import UpdateParams

    gone = continual_update(UpdateParams(batch=f"{root}/inbox/resent.jsonl", batches=root))
    assert gone.digest == "" and "no longer in the inbox: another update took it" in gone.reason

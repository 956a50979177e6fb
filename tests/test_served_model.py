"""Every registered version is an MLflow Model that completes prompts the way the forgetting suite reads them.

The champion loads with `mlflow.pyfunc.load_model` and predicts; `mlflow models serve` answers `/invocations`
with the same completions; each version records a signature (what the MLflow UI shows as its schema), an input
example and pip requirements; and the stages still find a Hugging Face folder for every version, including
versions registered before (a bare folder under `model/`) and versions whose local folder is gone.
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from cli.stack import wait_http
from continual_opd import registry
from continual_opd.decoding import greedy_complete
from continual_opd.modelio import load_model, weights_digest
from tests.helpers.local_servers import ARTIFACTS, chromium, free_port, render, stop_group

PROMPTS = ["12+34=", "rev:abcd=", "up:xyz="]
CHAMPION_URI = f"models:/{registry.STUDENT_MODEL}@{registry.CHAMPION}"


def champion_folder() -> Path:
    """The folder of whatever version is `@champion` now (tests earlier in the session may have promoted one)."""
    return registry.local_folder(registry.version_by_alias(registry.STUDENT_MODEL, registry.CHAMPION))


def suite_answers(folder, prompts=PROMPTS, **kwargs) -> list[str]:
    """What the forgetting suite reads from the model in `folder`."""
    model, tokenizer = load_model(folder)
    return greedy_complete(model, tokenizer, prompts, **kwargs)


def test_the_champion_loads_as_a_pyfunc_and_completes_prompts_like_the_forgetting_suite(champion):
    import mlflow

    registry.client()
    model = mlflow.pyfunc.load_model(CHAMPION_URI)
    answers = model.predict(PROMPTS)
    assert answers == suite_answers(champion_folder())
    assert answers[1:] == ["dcba", "XYZ"], "the demo base knows its core skills"
    assert model.predict(["rev:abcd="], params={"max_new_tokens": 2}) == ["dc"]


def test_each_version_records_a_signature_an_input_example_and_its_requirements(champion):
    import mlflow

    registry.client()
    uri = f"models:/{registry.STUDENT_MODEL}/{champion.version}"
    info = mlflow.models.get_model_info(uri)
    signature = info.signature.to_dict()
    assert json.loads(signature["inputs"]) == [{"type": "string", "required": True}]
    assert json.loads(signature["outputs"]) == [{"type": "string", "required": True}]
    assert json.loads(signature["params"])[0] | {"shape": None} == {"name": "max_new_tokens", "default": 8,
                                                                      "shape": None, "type": "long"}
    assert mlflow.models.Model.load(uri).load_input_example() == ["12+34="]
    requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text()
    for package in ("mlflow==", "torch==", "transformers==", "safetensors=="):
        assert package in requirements, requirements


def test_a_version_without_its_local_folder_resolves_to_the_mlflow_copy(champion):
    version = registry.get_version(registry.STUDENT_MODEL, champion.version)
    version.tags.pop("model_folder")  # another machine: the home's folder is not there
    folder = registry.local_folder(version)
    assert folder != Path(champion.folder) and (folder / "config.json").is_file()
    assert weights_digest(folder) == weights_digest(champion.folder)


def test_a_version_registered_as_a_bare_folder_still_resolves(champion, home):
    """Versions registered before every version was an MLflow Model: the folder's files under `model/`."""
    import mlflow

    client = registry.client()
    name = "legacy-layout-student"
    with mlflow.start_run(experiment_id=registry.experiment_id("legacy-layout")) as run:
        client.log_artifacts(run.info.run_id, champion.folder, artifact_path="model")
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass
    legacy = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    folder = registry.local_folder(legacy)
    assert (folder / "config.json").is_file() and weights_digest(folder) == weights_digest(champion.folder)
    assert suite_answers(folder) == suite_answers(champion.folder)


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_for_the_champion(champion, tmp_path):
    bin_dir = Path(sys.executable).parent
    port = free_port()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}  # it execs `uvicorn`
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", CHAMPION_URI, "--env-manager",
                               "local", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert server.poll() is None, "the server exited: " + (tmp_path / "serve.log").read_text()[-3000:]
            assert time.time() < deadline, "no answer on /ping: " + (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        request = urllib.request.Request(f"{base}/invocations", data=json.dumps({"inputs": PROMPTS}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        assert answer == {"predictions": suite_answers(champion_folder())}
    finally:
        stop_group(server)
        log.close()
    assert server.poll() is not None


@pytest.mark.slow
@pytest.mark.browser
def test_the_mlflow_ui_shows_each_versions_schema(champion, home, tmp_path):
    browser = chromium()
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(tmp_path / "mlflow-ui.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri",
                               registry.client().tracking_uri, "--default-artifact-root", home.artifacts.as_uri(),
                               "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=180)
        url = f"http://127.0.0.1:{port}/#/models/{registry.STUDENT_MODEL}/versions/{champion.version}"
        dom = render(browser, url, ARTIFACTS / "mlflow-version-schema.png")
    finally:
        stop_group(server)
        log.close()
    assert "Schema" in dom and "Inputs (1)" in dom and "Outputs (1)" in dom, dom[-3000:]

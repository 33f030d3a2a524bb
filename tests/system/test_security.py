"""An MLflow server started as the README says (`mlflow ui --backend-store-uri ... --host 127.0.0.1`) under attack:
a spoofed Host (DNS rebinding), a foreign Origin (a web page posting to it), and artifact paths that climb out of the
artifact root (`../`, `#`). Each must be refused and serve nothing outside the run's artifacts; the server listens on
127.0.0.1 only."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.conftest import mlflow_ui
from tests.ray_head import listening_addresses


def _request(url: str, headers: dict | None = None, data: dict | None = None) -> tuple[int, bytes]:
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={**({"Content-Type": "application/json"} if body else {}),
                                                          **(headers or {})}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("mlflow_sec")
    (root / "outside.txt").write_text("SECRET outside the artifact root")
    store = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    try:
        exp = mlflow.create_experiment("security", artifact_location=str(root / "artifacts"))
        with mlflow.start_run(experiment_id=exp) as run:
            (root / "inside.txt").write_text("artifact")
            mlflow.log_artifact(str(root / "inside.txt"))
    finally:
        mlflow.set_tracking_uri(None)
    with mlflow_ui(store, root) as (base, port):
        yield base, run.info.run_id, port


def test_mlflow_listens_on_loopback_only(mlflow_server):
    _, _, port = mlflow_server
    assert listening_addresses(port) == {"127.0.0.1"}


def test_spoofed_host_and_foreign_origin_are_refused(mlflow_server, reliability):
    base, run_id, port = mlflow_server
    search = f"{base}/api/2.0/mlflow/experiments/search?max_results=5"
    assert _request(search)[0] == 200
    assert _request(search, {"Host": f"localhost:{port}"})[0] == 200
    assert _request(search, {"Host": "evil.example"})[0] == 403  # DNS rebinding: another name for this address
    assert _request(f"{base}/get-artifact?path=inside.txt&run_uuid={run_id}", {"Host": "evil.example"})[0] == 403
    # a page on another site posting to the server through the user's browser
    status, _ = _request(f"{base}/api/2.0/mlflow/experiments/create", {"Origin": "http://evil.example"},
                         {"name": "from-evil"})
    assert status == 403
    status, _ = _request(f"{base}/api/2.0/mlflow/experiments/create", {"Origin": base}, {"name": "from-ui"})
    assert status == 200
    names = json.loads(_request(search)[1])["experiments"]
    assert "from-evil" not in {e["name"] for e in names}
    reliability(12, "an MLflow server as the README starts it: spoofed Host, foreign Origin",
                "none: 403, the foreign experiment not created", None, "refused")


@pytest.mark.parametrize("path", ["../outside.txt", "../../outside.txt", "%23/../../outside.txt",
                                  "inside.txt/../../../outside.txt", "/etc/passwd", "..%2F..%2Foutside.txt"])
def test_artifact_paths_cannot_leave_the_artifact_root(mlflow_server, path: str, reliability):
    base, run_id, _ = mlflow_server
    assert _request(f"{base}/get-artifact?path=inside.txt&run_uuid={run_id}") == (200, b"artifact")
    for url in (f"{base}/get-artifact?path={path}&run_uuid={run_id}",
                f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_id={run_id}&path={path}"):
        status, body = _request(url)
        assert status in (400, 403, 404), (url, status, body[:200])
        assert b"SECRET" not in body and b"root:" not in body
    reliability(12, "an MLflow server as the README starts it: ../, #, %2F and absolute artifact paths",
                "none: 400 / 403 / 404, no file outside the artifact root served", None, "refused")

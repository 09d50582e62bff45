"""Each Ollama front-end's calls, replayed against one live cluster (controller + one inference worker serving
Ollama's store and llama.cpp), asserting the shapes and fields that front-end relies on (issue 23):

- Open WebUI (backend/open_webui/routers/ollama.py): version (lowest of all connections), tags merged by
  `model`, ps for `expires_at`, pull streamed with `insecure: true` (its admin page reads `error`/`detail`,
  `completed/total` when `digest` is there, done at `status: success`), show {model}, copy {source,
  destination}, delete {model}.
- Enchanted / OllamaKit: HEAD / for reachability; /api/tags decoded with non-optional details strings and an
  ISO-8601 `modified_at` with fractional seconds; vision = families has clip or mllama.
- Continue: show {name}: `parameters` (num_ctx, stop) and `.Suffix` in `template` (fill-in-the-middle).
- AnythingLLM: show for every listed model: `capabilities`, the `model_info` key ending in `.context_length`.
- LobeChat: calls from a page of another origin (CORS preflight with no token, then the call with it).
- ollama-js (the official npm client, tests/js): version, list, pull streamed (it sends `name`), show, copy,
  delete.
Pulls of one model from several clients share one job; a client that aborts its stream leaves it running.
A copy reaches a holder that was offline when it ran (a second worker, started by that last test only).
"""

from __future__ import annotations

import json
import os
import re
import signal
from datetime import datetime

import pytest
import requests

from testbed.gguf_models import write_llama_gguf
from testbed.oci_registry import push_ollama_model
from testbed.processes import session, wait_until
from tests.support.fake_backends import FakeOpenAIModels
from tests.support.ollama_js import run_steps
from worker_agent.installers import model_slug

pytestmark = pytest.mark.integration

TOKEN = "frontend-token"
PAGE = "http://lobe.test:3210"
CODER_TEMPLATE = ("{{- if .Tools }}Tools: {{ .Tools }}{{ end }}{{ if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} "
                  "<MID>{{ else }}{{ .Prompt }}{{ end }}")
DETAIL_STRINGS = ("parent_model", "format", "family", "parameter_size", "quantization_level")


@pytest.fixture(scope="module")
def live(cluster, tiny_model, oci, workdir):
    """A controller (token, CORS for PAGE) and one inference worker serving Ollama's store and llama.cpp (a
    stand-in llama-server listing its models directory, so /api/ps has something loaded)."""
    llamacpp_dir = workdir / "nodes" / "inf-a" / "backends" / "llamacpp"
    llamacpp_dir.mkdir(parents=True)
    server = FakeOpenAIModels.llama_router(llamacpp_dir).start()
    cluster.llamacpp = server
    for repo, template, params in (
            ("library/coder", CODER_TEMPLATE, {"num_ctx": 4096, "stop": ["<|im_end|>", "<|endoftext|>"]}),
            ("library/shared", "{{ .Prompt }}", None), ("library/jsmodel", "{{ .Prompt }}", None),
            ("library/cancelme", "{{ .Prompt }}", None)):
        name = repo.split("/")[1]
        push_ollama_model(oci.url, repo, "latest", gguf_path=write_llama_gguf(workdir / f"{name}.gguf", name=name),
                          template=template, params=params)
    cluster.start_controller(ELDRIC_API_TOKEN=TOKEN, ELDRIC_CORS_ORIGINS=PAGE)
    cluster.http.headers["Authorization"] = f"Bearer {TOKEN}"
    cluster.start_worker("inf-a", ELDRIC_BACKENDS="ollama,llamacpp", ELDRIC_LLAMACPP_URL=server.url)
    yield cluster
    server.stop()


@pytest.fixture(scope="module")
def http(live):
    return live.http


def ollama_pull_stream(http, url: str, body: dict) -> list[dict]:
    """The pull stream read as Open WebUI's admin page reads it: line by line, errors first, progress while
    `digest` is there, done at `status: success`."""
    lines = []
    with http.post(f"{url}/api/pull", json=body, stream=True, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("application/x-ndjson")
        for raw in resp.iter_lines():
            line = json.loads(raw)
            assert "error" not in line and "detail" not in line, line
            if "digest" in line:
                assert 0 <= line["completed"] <= line["total"] and line["total"] > 0
            lines.append(line)
    assert lines[-1] == {"status": "success"}
    return lines


def iso8601_with_fraction(text: str) -> datetime:
    """What Swift's ISO8601DateFormatter with .withInternetDateTime and .withFractionalSeconds accepts."""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d)", text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_open_webui_verifies_lists_pulls_and_sees_what_is_loaded(live, http):
    url = live.controller_url
    version = http.get(f"{url}/api/version", timeout=10).json()["version"]
    assert tuple(map(int, re.sub(r"^v|-.*", "", version).split(".")))  # how it picks the lowest connection
    lines = ollama_pull_stream(http, url, {"model": "tiny", "insecure": True, "stream": True})
    assert lines[0] == {"status": "pulling manifest"} and any("digest" in line for line in lines)
    models = {m["model"]: m for m in http.get(f"{url}/api/tags", timeout=10).json()["models"]}  # merged by `model`
    tiny = models["tiny:latest"]
    assert tiny["name"] == "tiny:latest" and tiny["size"] > 0
    assert tiny["details"]["parameter_size"] and tiny["details"]["quantization_level"]  # its model picker shows them
    live.llamacpp.restart()  # the stand-in llama-server now lists the GGUF the pull linked into its directory

    def loaded():
        entries = http.get(f"{url}/api/ps", timeout=10).json()["models"]
        return next((e for e in entries if e["model"] == "tiny:latest"), None)
    entry = wait_until(loaded, timeout=15, interval=0.2, message="tiny in /api/ps")
    assert {"name", "model", "size", "digest", "details", "expires_at", "size_vram"} <= set(entry)
    assert datetime.fromisoformat(entry["expires_at"].replace("Z", "+00:00"))  # Open WebUI's "unloads in ..."
    assert entry["workers"] == ["inf-a"]


def test_enchanted_reaches_the_root_and_decodes_every_tag_strictly(live, http):
    assert requests.head(f"{live.controller_url}/", timeout=10).status_code == 200  # no token on reachability
    assert http.head(f"{live.controller_url}/api/tags", timeout=10).status_code == 200
    models = http.get(f"{live.controller_url}/api/tags", timeout=10).json()["models"]
    assert models
    for m in models:  # OKModelResponse: non-optional fields, one failure breaks the whole list
        assert isinstance(m["name"], str) and isinstance(m["digest"], str) and isinstance(m["size"], int)
        iso8601_with_fraction(m["modified_at"])
        assert all(isinstance(m["details"][k], str) for k in DETAIL_STRINGS), m["details"]
        assert isinstance(m["details"]["families"], list)
        assert not {"clip", "mllama"} & set(m["details"]["families"])  # tiny has no vision: not offered images


def test_continue_reads_num_ctx_stop_and_fill_in_the_middle(live, http):
    resp = http.post(f"{live.controller_url}/api/pull", json={"name": "coder", "stream": False}, timeout=60)
    assert resp.status_code == 200 and resp.json() == {"status": "success"}
    shown = http.post(f"{live.controller_url}/api/show", json={"name": "coder"}, timeout=10).json()
    params: dict[str, list[str]] = {}
    for line in shown["parameters"].splitlines():
        key, value = line.split(None, 1)
        params.setdefault(key, []).append(value)
    assert params == {"num_ctx": ["4096"], "stop": ['"<|im_end|>"', '"<|endoftext|>"']}
    assert ".Suffix" in shown["template"]
    assert "insert" in shown["capabilities"] and "tools" in shown["capabilities"]


def test_anythingllm_reads_capabilities_and_context_length_of_every_model(live, http):
    listed = [m["name"] for m in http.get(f"{live.controller_url}/api/tags", timeout=10).json()["models"]]
    assert {"tiny:latest", "coder:latest"} <= set(listed)
    for name in listed:
        shown = http.post(f"{live.controller_url}/api/show", json={"model": name}, timeout=10).json()
        assert "completion" in shown["capabilities"] and "embedding" not in shown["capabilities"]
        lengths = [v for k, v in shown["model_info"].items() if k.endswith(".context_length")]
        assert lengths and isinstance(lengths[0], int) and lengths[0] > 0
        assert shown["model_info"]["general.architecture"] == shown["details"]["family"] == "llama"
        iso8601_with_fraction(shown["modified_at"])


def test_lobechat_calls_from_the_page_with_cors(live):
    page = session()  # a browser: no token on the preflight, the token on the call
    for path, method in (("/api/tags", "GET"), ("/api/show", "POST"), ("/api/chat", "POST"), ("/v1/chat/completions", "POST")):
        pre = page.options(f"{live.controller_url}{path}", timeout=10, headers={
            "Origin": PAGE, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.ok and pre.headers["Access-Control-Allow-Origin"] == PAGE, (path, pre.status_code)
        assert "authorization" in pre.headers["Access-Control-Allow-Headers"].lower()
    resp = page.get(f"{live.controller_url}/api/tags", headers={"Origin": PAGE, "Authorization": f"Bearer {TOKEN}"},
                    timeout=10)
    assert resp.ok and resp.headers["Access-Control-Allow-Origin"] == PAGE and resp.json()["models"]
    stranger = page.get(f"{live.controller_url}/api/tags", timeout=10,
                        headers={"Origin": "http://elsewhere.test", "Authorization": f"Bearer {TOKEN}"})
    assert "Access-Control-Allow-Origin" not in stranger.headers


def test_open_webui_copies_a_model_cluster_wide_then_deletes_the_copy(live, http):
    url = live.controller_url
    resp = http.post(f"{url}/api/copy", json={"source": "tiny", "destination": "tiny-alias"}, timeout=60)
    assert resp.status_code == 200 and resp.content == b""  # Ollama's answer
    names = {m["name"]: m for m in http.get(f"{url}/api/tags", timeout=10).json()["models"]}
    assert names["tiny-alias:latest"]["digest"] == names["tiny:latest"]["digest"]  # the same manifest bytes
    store = live.store("inf-a")
    assert (store / "manifests" / "registry.ollama.ai" / "library" / "tiny-alias" / "latest").is_file()
    linked = live.root / "nodes" / "inf-a" / "backends" / "llamacpp" / f"{model_slug('tiny-alias')}.gguf"
    original = linked.with_name(f"{model_slug('tiny')}.gguf")
    assert linked.stat().st_ino == original.stat().st_ino  # llama.cpp serves it under the new name, no copy
    assert http.post(f"{url}/api/show", json={"model": "tiny-alias"}, timeout=10).json()["template"] == "{{ .Prompt }}"
    missing = http.post(f"{url}/api/copy", json={"source": "nosuch", "destination": "x"}, timeout=10)
    assert missing.status_code == 404 and "nosuch" in missing.json()["error"]
    bad = http.post(f"{url}/api/copy", json={"source": "tiny", "destination": "Not A Name!"}, timeout=10)
    assert bad.status_code == 400 and set(bad.json()) == {"error"}
    assert http.delete(f"{url}/api/delete", json={"model": "tiny-alias"}, timeout=60).status_code == 200
    names = {m["name"] for m in http.get(f"{url}/api/tags", timeout=10).json()["models"]}
    assert "tiny-alias:latest" not in names and "tiny:latest" in names
    assert not linked.exists() and original.exists()  # the source keeps its blob and its llama.cpp file
    assert http.post(f"{url}/api/show", json={"model": "tiny"}, timeout=10).ok


def test_pulls_of_one_model_share_one_job_and_an_aborted_stream_leaves_it_running(live, http):
    url, worker = live.controller_url, live.workers["inf-a"]
    os.killpg(worker.proc.pid, signal.SIGSTOP)  # the job cannot finish while both clients attach
    try:
        first = http.post(f"{url}/api/pull", json={"model": "shared"}, stream=True, timeout=30)
        assert json.loads(next(first.iter_lines())) == {"status": "pulling manifest"}
        second = http.post(f"{url}/api/pull", json={"name": "shared:latest"}, stream=True, timeout=30)
        assert json.loads(next(second.iter_lines())) == {"status": "pulling manifest"}
        jobs = [j for j in http.get(f"{url}/api/v1/models/pull-jobs", timeout=10).json()["jobs"]
                if j["model"] == "shared:latest"]
        assert len(jobs) == 1, jobs
        first.close()  # both clients go away mid-stream
        second.close()
    finally:
        os.killpg(worker.proc.pid, signal.SIGCONT)
    job = live.wait_job(jobs[0]["id"], timeout=30)
    assert job["state"] == "completed"
    wait_until(lambda: "shared:latest" in {m["name"] for m in http.get(f"{url}/api/tags", timeout=10).json()["models"]},
               timeout=10, interval=0.2, message="shared:latest listed")
    assert (live.store("inf-a") / "manifests" / "registry.ollama.ai" / "library" / "shared" / "latest").is_file()


def test_open_webui_cancels_a_pull_by_aborting_its_stream_then_deleting(live, http):
    url, worker = live.controller_url, live.workers["inf-a"]
    os.killpg(worker.proc.pid, signal.SIGSTOP)  # the pull is still running when the admin page cancels it
    try:
        stream = http.post(f"{url}/api/pull", json={"model": "cancelme", "insecure": True}, stream=True, timeout=30)
        assert json.loads(next(stream.iter_lines())) == {"status": "pulling manifest"}
        stream.close()
        assert http.delete(f"{url}/api/delete", json={"model": "cancelme"}, timeout=30).status_code == 200
    finally:
        os.killpg(worker.proc.pid, signal.SIGCONT)
    job = next(j for j in http.get(f"{url}/api/v1/models/pull-jobs", timeout=10).json()["jobs"]
               if j["model"] == "cancelme:latest")
    assert job["state"] == "cancelled"
    assert http.post(f"{url}/api/show", json={"model": "cancelme"}, timeout=10).status_code == 404
    manifest = live.store("inf-a") / "manifests" / "registry.ollama.ai" / "library" / "cancelme" / "latest"
    assert not manifest.exists()


def test_the_official_npm_client_manages_the_cluster(live):
    steps = [{"op": "version"}, {"op": "pull", "model": "jsmodel", "stream": True}, {"op": "list"},
             {"op": "show", "model": "jsmodel"}, {"op": "copy", "source": "jsmodel", "destination": "jsmodel-copy"},
             {"op": "list"}, {"op": "delete", "model": "jsmodel-copy"}, {"op": "delete", "model": "jsmodel"},
             {"op": "list"}, {"op": "show", "model": "jsmodel"}]
    version, pulled, listed, shown, copied, listed_after_copy, _d1, _d2, listed_after_delete, gone = \
        run_steps(live.controller_url, steps, TOKEN)
    assert version["version"]
    statuses = [p["status"] for p in pulled["parts"]]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success", statuses
    assert "jsmodel:latest" in {m["name"] for m in listed["models"]}
    assert shown["details"]["family"] == "llama" and "completion" in shown["capabilities"]
    assert copied == {"status": "success"}
    assert {"jsmodel:latest", "jsmodel-copy:latest"} <= {m["name"] for m in listed_after_copy["models"]}
    assert not {"jsmodel:latest", "jsmodel-copy:latest"} & {m["name"] for m in listed_after_delete["models"]}
    assert gone["status_code"] == 404 and "jsmodel" in gone["error"]


def test_a_copy_reaches_a_holder_that_was_offline_when_it_ran(live, http):
    """Open WebUI copies while one worker holding the source is away: the answer does not wait for it, and the
    worker gets the destination when it is back (its queued part within the grace; beat's catch-up after it,
    tests/unit/test_ollama_manage.py). Before: offline holders were no targets and never got the copy."""
    url = live.controller_url
    away = live.start_worker("inf-b", ELDRIC_BACKENDS="ollama")  # last test: the others ran on inf-a alone
    pulled = live.api("POST", "/api/v1/models/pull", json={"model": "tiny", "workers": ["inf-a", "inf-b"]}).json()
    assert live.wait_job(pulled["id"], timeout=30)["state"] == "completed"
    for wid in ("inf-a", "inf-b"):  # the holders, as the controller finds them
        wait_until(lambda wid=wid: "tiny:latest" in {m["name"] for m in live.api(
            "GET", f"/api/v1/workers/{wid}/models").json()["models"]}, timeout=10, interval=0.2, message=f"tiny on {wid}")
    os.killpg(away.proc.pid, signal.SIGSTOP)
    try:
        live.redis.delete("eldric:worker:inf-b:alive")  # a stopped agent's mark lapses within 3 s: now, no wait
        resp = http.post(f"{url}/api/copy", json={"source": "tiny", "destination": "tiny-later"}, timeout=60)
        assert resp.status_code == 200 and resp.content == b"", resp.text
        job = next(j for j in live.api("GET", "/api/v1/models/pull-jobs?limit=50").json()["jobs"]
                   if j["model"] == "tiny-later:latest")
        assert {w["worker"]: w["state"] for w in job["workers"]} == {"inf-a": "completed", "inf-b": "offline"}
    finally:
        os.killpg(away.proc.pid, signal.SIGCONT)
    manifest = live.store("inf-b") / "manifests" / "registry.ollama.ai" / "library" / "tiny-later" / "latest"
    wait_until(manifest.is_file, timeout=20, interval=0.2, message=f"the copy on inf-b\n{live.logs()}")
    assert live.wait_job(job["id"], timeout=20)["state"] == "completed"
    assert manifest.read_bytes() == (manifest.parents[1] / "tiny" / "latest").read_bytes()

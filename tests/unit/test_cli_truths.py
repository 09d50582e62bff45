"""The operator commands say what happened (issue 22, finding 6), without a network: a fresh upload is not
"resumed", a refused token is named as such, `workers remove` names its own flag, `registry delete` takes
`name:version` as `distribute` does."""

from __future__ import annotations

import io
import itertools

import pytest
import requests
from rich.console import Console

from eldric.cli import build_parser
from eldric.client import cli as client_cli
from eldric.client.api import Api, ClientError
from eldric.transfer.model_registry import API_PREFIX
from tests.unit.test_client_cli import FakeRegistry

GGUF_LIKE = b"GGUF" + (bytes(range(256)) * 40)[4:]  # 10240 bytes that pass the head check


def _upload(reg, path, state_dir, **kw) -> client_cli.ResumableUpload:
    return client_cli.ResumableUpload(reg, path, name="m", chunk_bytes=4096, state_dir=state_dir,
                                      sleep=lambda s: None, **kw)


def test_a_fresh_upload_is_not_reported_as_resumed(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(GGUF_LIKE)
    upload = _upload(FakeRegistry(), path, tmp_path / "state")
    upload.run(lambda n: None)
    assert upload.resumed_at == 0 and upload.offset == 10240  # before: resumed_at 4096, the first chunk's end


def test_a_rerun_reports_the_offset_it_took_up_even_at_zero_bytes_sent(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(GGUF_LIKE)
    reg = FakeRegistry()

    def interrupt_first_patch(method, p, **kw):
        if method == "PATCH":
            raise KeyboardInterrupt
        return reg(method, p, **kw)

    with pytest.raises(KeyboardInterrupt):
        _upload(interrupt_first_patch, path, tmp_path / "state").run(lambda n: None)
    again = _upload(reg, path, tmp_path / "state")
    again.run(lambda n: None)
    assert again.resumed_at == 0 and reg.patch_bytes == [4096, 4096, 2048] and len(reg.drafts) == 1


@pytest.mark.parametrize("name, head, fmt, message", [
    ("m.bin", b"GGUF", "gguf", "a gguf model needs a .gguf file; nothing was uploaded"),
    ("m.gguf", b"PK\x03\x04", None, "m.gguf: not a GGUF file (magic is b'PK\\x03\\x04', expected b'GGUF'); "
                                 "nothing was uploaded"),
    ("m.safetensors", b"\x10" + bytes(7) + b"{", None,
     "a safetensors model needs config.json and at least one .safetensors file; nothing was uploaded"),
])
def test_an_upload_of_the_wrong_format_is_refused_before_anything_is_sent(tmp_path, name, head, fmt, message):
    path = tmp_path / name
    path.write_bytes(head + bytes(4096))
    reg = FakeRegistry()
    with pytest.raises(ClientError) as err:
        _upload(reg, path, tmp_path / "state", fmt=fmt).run(lambda n: None)
    assert str(err.value) == message and err.value.status == 422
    assert reg.calls == [] and not (tmp_path / "state").exists()


def test_the_same_files_again_end_the_draft_and_the_resume_state(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(GGUF_LIKE)
    reg = FakeRegistry()

    def twin(method, p, **kw):
        if p.endswith("/commit"):
            raise ClientError("HTTP 409: model m:v1 (abc) already holds these files", 409)
        return reg(method, p, **kw)

    with pytest.raises(ClientError, match="already holds"):
        _upload(twin, path, tmp_path / "state").run(lambda n: None)
    assert ("DELETE", f"{API_PREFIX}/m0") in reg.calls and not reg.drafts
    assert not list((tmp_path / "state").iterdir())


class _Refusing(Api):
    """A controller that is up and answers 401 to every API call."""

    def __init__(self, token: str = "") -> None:
        super().__init__("http://ctl:8880", token=token)
        self.slept = 0

    def call(self, method: str, path: str, **kw) -> requests.Response:
        if path == "/healthz":
            resp = requests.Response()
            resp.status_code, resp._content = 200, b'{"status": "ok"}'
            return resp
        raise ClientError(f"{method} {path}: HTTP 401: missing or invalid bearer token", 401)


@pytest.mark.parametrize("token, state", [("", "missing"), ("wrong", "wrong")])
def test_status_against_a_token_protected_controller_names_the_token(token, state):
    api, out, err = _Refusing(token), Console(file=io.StringIO()), Console(file=io.StringIO(), width=400)
    slept: list[float] = []
    ticks = itertools.count(0, 30)  # a clock that moves: the old code waited out the 60 s, retrying the 401
    status = client_cli.cluster_status(api, wait=60, sleep=slept.append, clock=lambda: next(ticks))
    assert status["ok"] is False and status["unauthorized"] is True and not slept  # no waiting for a refusal
    args = build_parser().parse_args(["status"])
    assert client_cli.cmd_status(api, args, out, err) == 1
    said = err.file.getvalue()
    assert "not up" not in said, said
    assert said.strip() == ("eldric status: the controller at http://ctl:8880 is up but refused the request: GET "
                            "/api/v1/workers: HTTP 401: missing or invalid bearer token; the API token is "
                            f"{state}: give the controller's ELDRIC_API_TOKEN with --token or $ELDRIC_API_TOKEN")


class _Conflicting:
    def call(self, method: str, path: str, **kw):
        raise ClientError(f"{method} {path}: HTTP 409: worker w1 is online; stop its agent first, or pass force=true",
                          409)


def test_workers_remove_of_an_online_worker_names_the_cli_flag():
    out = Console(file=io.StringIO())
    with pytest.raises(ClientError) as err:
        client_cli.cmd_workers(_Conflicting(), build_parser().parse_args(["workers", "remove", "w1"]), out, out)
    assert str(err.value) == "worker w1 is online; stop its agent first, or run eldric workers remove w1 --force"
    assert "force=true" not in str(err.value)


class _Catalog:
    """The controller's model-registry listing and delete, in memory."""

    def __init__(self, models: list[dict]) -> None:
        self.models, self.deleted = models, []

    def get(self, path: str, **params) -> dict:
        if path == API_PREFIX:
            return {"models": [m for m in self.models if m["name"] == params["name"]]}
        found = [m for m in self.models if path.endswith(m["id"])]
        if not found:
            raise ClientError(f"GET {path}: HTTP 404: no model", 404)
        return found[0]

    def call(self, method: str, path: str, **kw):
        assert method == "DELETE"
        self.deleted.append(path.rsplit("/", 1)[1])
        return requests.Response()


HOUSE = [{"id": "a" * 32, "name": "house", "version": "v2", "reference": "house:v2"},
         {"id": "b" * 32, "name": "house", "version": "v1", "reference": "house:v1"},
         {"id": "c" * 32, "name": "acme/solo", "version": "v1", "reference": "acme/solo:v1"}]


@pytest.mark.parametrize("target, deleted", [("house:v1", "b" * 32), ("a" * 32, "a" * 32),
                                             ("acme/solo", "c" * 32), ("acme/solo:v1", "c" * 32)])
def test_registry_delete_takes_name_version_or_the_id(target, deleted):
    api, out = _Catalog(HOUSE), Console(file=io.StringIO())
    args = build_parser().parse_args(["registry", "delete", target])
    assert client_cli.cmd_registry(api, args, out, out) == 0
    assert api.deleted == [deleted]
    reference = next(m["reference"] for m in HOUSE if m["id"] == deleted)
    assert out.file.getvalue().strip() == f"deleted {reference} ({deleted})"


@pytest.mark.parametrize("target, message", [
    ("house", "house has 2 versions (v2, v1); name one as house:<version>, or give the id"),
    ("house:v9", "no model 'house:v9' in the registry; house has versions v1, v2"),
    ("nohouse:v1", "no model 'nohouse:v1' in the registry"),
])
def test_registry_delete_refuses_what_it_would_have_to_guess(target, message):
    api, out = _Catalog(HOUSE), Console(file=io.StringIO())
    with pytest.raises(ClientError) as err:
        client_cli.cmd_registry(api, build_parser().parse_args(["registry", "delete", target]), out, out)
    assert str(err.value) == message and not api.deleted

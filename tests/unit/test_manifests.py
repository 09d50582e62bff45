"""eldric.core.manifests: parsing and validating the schema-2 manifests Ollama's registry serves."""

from __future__ import annotations

import json

import pytest

from eldric.core.digests import Digest
from eldric.core.errors import InvalidManifestError
from eldric.core.manifests import (
    CONFIG,
    MANIFEST_V2,
    MAX_MANIFEST_BYTES,
    OCI_MANIFEST,
    OLLAMA_LICENSE,
    OLLAMA_MODEL,
    OLLAMA_PARAMS,
    OLLAMA_TEMPLATE,
    Layer,
    Manifest,
)

CONFIG_D = Digest.of_bytes(b"config")
MODEL_D = Digest.of_bytes(b"model")
TEMPLATE_D = Digest.of_bytes(b"template")
LICENSE_D = Digest.of_bytes(b"license")


def entry(media_type: str, digest: Digest, size: int) -> dict:
    return {"mediaType": media_type, "digest": str(digest), "size": size}


def ollama_doc(**overrides) -> dict:
    """A manifest shaped like registry.ollama.ai's answer for a small model."""
    doc = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": entry(CONFIG, CONFIG_D, 485),
        "layers": [
            entry(OLLAMA_MODEL, MODEL_D, 397807936),
            entry(OLLAMA_TEMPLATE, TEMPLATE_D, 1482),
            entry(OLLAMA_LICENSE, LICENSE_D, 11343),
        ],
    }
    doc.update(overrides)
    return doc


def raw(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_parse_reads_config_and_layers_in_order():
    m = Manifest.parse(raw(ollama_doc()))
    assert m.media_type == MANIFEST_V2
    assert m.config == Layer(CONFIG, CONFIG_D, 485)
    assert [layer.media_type for layer in m.layers] == [OLLAMA_MODEL, OLLAMA_TEMPLATE, OLLAMA_LICENSE]
    assert [layer.digest for layer in m.layers] == [MODEL_D, TEMPLATE_D, LICENSE_D]
    assert m.layers[0].size == 397807936


def test_parse_accepts_oci_media_type_and_defaults_a_missing_one():
    assert Manifest.parse(raw(ollama_doc(mediaType=OCI_MANIFEST))).media_type == OCI_MANIFEST
    doc = ollama_doc()
    del doc["mediaType"]
    assert Manifest.parse(raw(doc)).media_type == MANIFEST_V2


def test_parse_accepts_a_manifest_without_layers():
    m = Manifest.parse(raw(ollama_doc(layers=[])))
    assert m.layers == ()
    assert m.blobs() == [m.config]


def test_zero_size_layer_is_valid():
    m = Manifest.parse(raw(ollama_doc(layers=[entry(OLLAMA_PARAMS, Digest.of_bytes(b""), 0)])))
    assert m.layers[0].size == 0


def _bad_layer(**fields) -> dict:
    return ollama_doc(layers=[{**entry(OLLAMA_MODEL, MODEL_D, 10), **fields}])


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
        pytest.param(raw([]), id="array"),
        pytest.param(raw("manifest"), id="string"),
        pytest.param(raw(ollama_doc(schemaVersion=1)), id="schema-1"),
        pytest.param(raw(ollama_doc(schemaVersion="2")), id="schema-string"),
        pytest.param(raw({k: v for k, v in ollama_doc().items() if k != "schemaVersion"}), id="schema-missing"),
        pytest.param(raw({k: v for k, v in ollama_doc().items() if k != "config"}), id="config-missing"),
        pytest.param(raw({k: v for k, v in ollama_doc().items() if k != "layers"}), id="layers-missing"),
        pytest.param(raw(ollama_doc(config=[])), id="config-not-object"),
        pytest.param(raw(ollama_doc(layers={})), id="layers-not-list"),
        pytest.param(raw(ollama_doc(layers=["sha256:" + MODEL_D.hex])), id="layer-not-object"),
        pytest.param(raw(_bad_layer(digest="sha256:1234")), id="short-digest"),
        pytest.param(raw(_bad_layer(digest="sha256:../../../etc/passwd")), id="path-digest"),
        pytest.param(raw(_bad_layer(digest="md5:" + "0" * 32)), id="wrong-algorithm"),
        pytest.param(raw(_bad_layer(digest=None)), id="null-digest"),
        pytest.param(raw(ollama_doc(config=entry(CONFIG, CONFIG_D, 1) | {"digest": "bad"})), id="config-digest"),
        pytest.param(raw(_bad_layer(size=-1)), id="negative-size"),
        pytest.param(raw(_bad_layer(size=1.5)), id="float-size"),
        pytest.param(raw(_bad_layer(size="10")), id="string-size"),
        pytest.param(raw(_bad_layer(size=True)), id="bool-size"),
        pytest.param(raw(_bad_layer(size=None)), id="null-size"),
        pytest.param(raw(_bad_layer(mediaType="")), id="empty-media-type"),
        pytest.param(raw(_bad_layer(mediaType=7)), id="int-media-type"),
        pytest.param(b" " * (MAX_MANIFEST_BYTES + 1), id="too-large"),
    ],
)
def test_parse_rejects_unusable_manifests(payload):
    with pytest.raises(InvalidManifestError):
        Manifest.parse(payload)


def test_parse_rejects_deeply_nested_json_as_invalid():
    with pytest.raises(InvalidManifestError):
        Manifest.parse(b"[" * 100_000)


def test_blobs_lists_config_first_then_layers_each_digest_once():
    doc = ollama_doc(layers=[
        entry(OLLAMA_MODEL, MODEL_D, 100),
        entry(OLLAMA_TEMPLATE, TEMPLATE_D, 10),
        entry(OLLAMA_MODEL, MODEL_D, 100),       # same blob listed twice
        entry(OLLAMA_LICENSE, CONFIG_D, 485),   # same blob as the config
    ])
    m = Manifest.parse(raw(doc))
    assert [b.digest for b in m.blobs()] == [CONFIG_D, MODEL_D, TEMPLATE_D]
    assert m.blobs()[0] is m.config


def test_total_size_counts_each_blob_once():
    doc = ollama_doc(config=entry(CONFIG, CONFIG_D, 5), layers=[
        entry(OLLAMA_MODEL, MODEL_D, 100),
        entry(OLLAMA_MODEL, MODEL_D, 100),
        entry(OLLAMA_TEMPLATE, TEMPLATE_D, 10),
    ])
    assert Manifest.parse(raw(doc)).total_size == 115


def test_layer_of_finds_the_first_layer_of_a_media_type():
    m = Manifest.parse(raw(ollama_doc()))
    assert m.layer_of(OLLAMA_TEMPLATE).digest == TEMPLATE_D
    assert m.layer_of(OLLAMA_PARAMS) is None
    assert m.layer_of(CONFIG) is None  # the config is not a layer


def test_to_bytes_round_trips():
    m = Manifest.parse(raw(ollama_doc(mediaType=OCI_MANIFEST)))
    again = Manifest.parse(m.to_bytes())
    assert again == m
    assert again.to_bytes() == m.to_bytes()


def test_to_bytes_is_a_schema_2_document_with_the_same_entries():
    doc = json.loads(Manifest.parse(raw(ollama_doc())).to_bytes())
    assert doc == ollama_doc()

"""worker_agent.installers.ollama / chat_templates: the create request, the Modelfile, the template chosen."""

from __future__ import annotations

import pytest

from tests.support.fake_backends import _check_go_template
from testbed.gguf_models import DEFAULT_CHAT_TEMPLATE, write_llama_gguf
from worker_agent.installers import LocalModel, UnsupportedModelError
from eldric.core.chat_templates import CHATML, FAMILIES, LLAMA3, choose_template
from worker_agent.installers.ollama import create_request, render_modelfile, served_name

LLAMA3_JINJA = ("{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
                "{{ message['content'] | trim }}<|eot_id|>{% endfor %}")
JINJA_BY_FAMILY = {
    "llama3": LLAMA3_JINJA,
    "chatml": DEFAULT_CHAT_TEMPLATE,
    "gemma": "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n"
             "{% endfor %}",
    "phi3": "{% for m in messages %}{% if m.role == 'user' %}{{ '<|user|>\n' + m.content + '<|end|>\n' }}"
            "{% else %}{{ '<|assistant|>\n' + m.content + '<|end|>\n' }}{% endif %}{% endfor %}",
    "zephyr": "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n{% endfor %}<|user|>",
    "llama2": "{% if messages[0]['role'] == 'system' %}<<SYS>>\n{{ messages[0]['content'] }}\n<</SYS>>\n\n"
              "{% endif %}{% for m in messages %}[INST] {{ m.content }} [/INST]{% endfor %}",
    "mistral": "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[INST] {{ m.content }} [/INST]"
               "{% else %}{{ m.content }}{{ eos_token }}{% endif %}{% endfor %}",
}


@pytest.fixture
def gguf(tmp_path):
    return write_llama_gguf(tmp_path / "tiny.gguf")


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_a_known_jinja_template_becomes_its_familys_go_template(family):
    choice = choose_template(go_template=None, chat_template=JINJA_BY_FAMILY[family], architecture="llama")
    expected = next(f for f in FAMILIES if f.name == family)
    assert choice.source == f"family:{family}"
    assert choice.template == expected.template and choice.stop == expected.stop
    _check_go_template(choice.template)  # what the Ollama stand-in accepts: no Jinja, balanced actions


def test_every_family_template_is_well_formed_go():
    for family in FAMILIES:
        _check_go_template(family.template)
        assert "{{ .Content }}" in family.template or "{{ .Prompt }}" in family.template, family.name


def test_an_unknown_jinja_template_is_left_to_ollama():
    choice = choose_template(go_template=None, chat_template="{% for m in messages %}### {{ m.content }}{% endfor %}",
                             architecture="llama")
    assert (choice.template, choice.stop, choice.source) == (None, (), "ollama")


def test_a_go_template_shipped_with_the_model_is_kept_as_is():
    own = "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}{{ end }}"
    choice = choose_template(go_template=own, chat_template=LLAMA3_JINJA, architecture="llama")
    assert (choice.template, choice.source) == (own, "model")
    assert choice.stop == ("<|im_start|>", "<|im_end|>")  # stop tokens still come from the family


def test_a_gguf_chat_template_that_is_already_go_is_kept():
    choice = choose_template(go_template=None, chat_template="{{ .System }} USER: {{ .Prompt }} ASSISTANT:",
                             architecture="llama")
    assert choice.source == "gguf" and choice.template.startswith("{{ .System }}")


@pytest.mark.parametrize("arch,family", [("qwen2", "chatml"), ("gemma2", "gemma"), ("phi3", "phi3")])
def test_without_a_chat_template_an_unambiguous_architecture_decides(arch, family):
    choice = choose_template(go_template=None, chat_template=None, architecture=arch)
    assert choice.source == f"architecture:{family}"


def test_without_a_chat_template_llama_is_ambiguous():
    assert choose_template(go_template=None, chat_template=None, architecture="llama").template is None


def test_create_request_uses_the_gguf_chat_template_and_its_stop_tokens(gguf):
    model = LocalModel.from_path("tiny", gguf, system="Answer briefly.")
    request = create_request(model)
    assert request["model"] == "tiny:latest"
    assert request["files"] == {"tiny.gguf": model.digest("tiny.gguf")}
    assert request["template"] == CHATML
    assert request["parameters"] == {"stop": ["<|im_start|>", "<|im_end|>"]}
    assert request["system"] == "Answer briefly."


def test_create_request_without_system_or_template_sends_neither(tmp_path):
    model = LocalModel.from_path("acme/plain:v1", write_llama_gguf(tmp_path / "p.gguf", chat_template=None))
    request = create_request(model)
    assert request["model"] == "acme/plain:v1"
    assert "template" not in request and "system" not in request and "parameters" not in request


def test_given_parameters_win_over_family_stop_tokens(gguf):
    model = LocalModel.from_path("tiny", gguf, parameters={"stop": ["END"], "num_ctx": 4096})
    assert create_request(model)["parameters"] == {"stop": ["END"], "num_ctx": 4096}


def test_llama3_template_from_the_gguf(tmp_path):
    model = LocalModel.from_path("l3", write_llama_gguf(tmp_path / "l3.gguf", chat_template=LLAMA3_JINJA))
    request = create_request(model)
    assert request["template"] == LLAMA3
    assert request["parameters"]["stop"] == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def test_modelfile_says_what_the_api_request_says(gguf):
    model = LocalModel.from_path("tiny", gguf, system='Say "hi"\nthen stop.', parameters={"num_ctx": 2048})
    text = render_modelfile(model, create_request(model))
    lines = text.splitlines()
    assert f"FROM {gguf}" in lines
    assert f'TEMPLATE """{CHATML}"""' in text
    assert 'PARAMETER stop "<|im_start|>"' in lines and 'PARAMETER stop "<|im_end|>"' in lines
    assert "PARAMETER num_ctx 2048" in lines
    assert 'SYSTEM """Say "hi"\nthen stop."""' in text
    assert lines[1].endswith("ollama create tiny:latest -f Modelfile")


def test_modelfile_is_the_same_every_time(gguf):
    model = LocalModel.from_path("tiny", gguf)
    assert render_modelfile(model, create_request(model)) == render_modelfile(model, create_request(model))


def test_ollama_refuses_safetensors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    from safetensors.numpy import save_file
    import numpy as np
    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(tmp_path / "model.safetensors"))
    model = LocalModel.from_path("st", tmp_path)
    with pytest.raises(UnsupportedModelError, match="GGUF"):
        create_request(model)


@pytest.mark.parametrize("name,shown", [("tiny", "tiny:latest"), ("qwen2.5:0.5b", "qwen2.5:0.5b"),
                                        ("acme/m:v1", "acme/m:v1"), ("hf.co/org/m:q4", "hf.co/org/m:q4")])
def test_served_name_is_ollamas_display_name(name, shown):
    assert served_name(name) == shown

"""Chat templates for Ollama: a model's Jinja chat template mapped to an Ollama Go template.

Ollama renders prompts with Go's text/template, while GGUF files carry a Jinja
template (`tokenizer.chat_template`). Converting arbitrary Jinja is not possible in
general, so a template is recognised by its family's special tokens and replaced by
that family's Go template and stop tokens. Order matters: llama3 and ChatML markers
are checked before the looser `[INST]` and `<|user|>` ones.

Outcome, in this order:
1. the model ships an Ollama Go template (e.g. from an Ollama registry's template layer): kept;
2. the chat template is already a Go template (`{{ .Messages }}`-style, no `{%`): kept;
3. the chat template (or, without one, the architecture) names a known family: its default;
4. anything else: no TEMPLATE, and Ollama detects one from the GGUF itself when it creates the model.
"""

from __future__ import annotations

from dataclasses import dataclass

CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

MISTRAL = """{{- range $i, $_ := .Messages }}
{{- if eq .Role "user" }}[INST] {{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>
{{- end }}
{{- end }}"""

LLAMA2 = """{{- range $i, $_ := .Messages }}
{{- if eq .Role "user" }}[INST] {{ if and (eq $i 0) $.System }}<<SYS>>
{{ $.System }}
<</SYS>>

{{ end }}{{ .Content }} [/INST]
{{- else if eq .Role "assistant" }} {{ .Content }} </s><s>
{{- end }}
{{- end }}"""

GEMMA = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ if and (eq $i 0) $.System }}{{ $.System }}

{{ end }}{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

PHI3 = """{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}
{{- range .Messages }}<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ end }}<|assistant|>
"""

ZEPHYR = """{{- if .System }}<|system|>
{{ .System }}</s>
{{ end }}
{{- range .Messages }}<|{{ .Role }}|>
{{ .Content }}</s>
{{ end }}<|assistant|>
"""


@dataclass(frozen=True)
class Family:
    name: str
    markers: tuple[str, ...]  # all must occur in the Jinja template
    template: str
    stop: tuple[str, ...]


FAMILIES = (
    Family("llama3", ("<|start_header_id|>", "<|eot_id|>"), LLAMA3,
           ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    Family("chatml", ("<|im_start|>",), CHATML, ("<|im_start|>", "<|im_end|>")),
    Family("gemma", ("<start_of_turn>",), GEMMA, ("<start_of_turn>", "<end_of_turn>")),
    Family("phi3", ("<|user|>", "<|end|>"), PHI3, ("<|end|>", "<|user|>", "<|assistant|>")),
    Family("zephyr", ("<|user|>",), ZEPHYR, ("<|system|>", "<|user|>", "<|assistant|>", "</s>")),
    Family("llama2", ("[INST]", "<<SYS>>"), LLAMA2, ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")),
    Family("mistral", ("[INST]",), MISTRAL, ("[INST]", "[/INST]")),
)
_BY_NAME = {f.name: f for f in FAMILIES}
# Architectures whose chat format is unambiguous, for GGUFs that carry no chat template.
ARCHITECTURES = {"qwen2": "chatml", "qwen2moe": "chatml", "qwen3": "chatml", "qwen3moe": "chatml",
                 "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "phi3": "phi3"}


@dataclass(frozen=True)
class TemplateChoice:
    template: str | None  # None: leave it to Ollama
    stop: tuple[str, ...]
    source: str  # "model", "gguf", "family:<name>", "architecture:<name>", "ollama"


def family_of(chat_template: str | None, architecture: str | None = None) -> Family | None:
    if chat_template:
        for family in FAMILIES:
            if all(m in chat_template for m in family.markers):
                return family
        return None
    return _BY_NAME.get(ARCHITECTURES.get((architecture or "").lower(), ""))


def is_go_template(text: str) -> bool:
    return "{{" in text and "{%" not in text and ("{{ ." in text or "{{- ." in text or "{{ range" in text
                                                     or "{{- range" in text or "{{ if" in text or "{{- if" in text)


def choose_template(*, go_template: str | None, chat_template: str | None,
                    architecture: str | None) -> TemplateChoice:
    """The TEMPLATE and stop tokens to create an Ollama model with (see the module's list)."""
    if go_template:
        family = family_of(go_template)
        return TemplateChoice(go_template, family.stop if family else (), "model")
    if chat_template and is_go_template(chat_template):
        family = family_of(chat_template)
        return TemplateChoice(chat_template, family.stop if family else (), "gguf")
    family = family_of(chat_template, architecture)
    if family is not None:
        how = "family" if chat_template else "architecture"
        return TemplateChoice(family.template, family.stop, f"{how}:{family.name}")
    return TemplateChoice(None, (), "ollama")

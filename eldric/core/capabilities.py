"""A model's capabilities as Ollama names them (api/types.go `capabilities`; server/images.go Model.Capabilities),
from what a show answer holds: the template and the GGUF header's keys. The agents derive them for their show
answers; the controller completes an older agent's answer with the same rule."""

from __future__ import annotations

from collections.abc import Collection, Mapping

# The architectures Ollama serves as embedding models (their GGUF carries `<arch>.pooling_type`).
EMBEDDING_ARCHITECTURES = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "xlm-roberta", "t5encoder"})
THINKING_ARCHITECTURES = frozenset({"gptoss", "gpt-oss"})  # Ollama: thinking whatever their template says
VISION_FAMILIES = frozenset({"clip", "mllama"})  # what Enchanted and Open WebUI read as "has vision"


def derive_capabilities(template: str, model_info: Mapping, families: Collection[str] = (), *,
                        has_projector: bool = False) -> list[str]:
    """What Ollama's Model.Capabilities (server/images.go) says, from what a show answer holds: an embedding
    model (its GGUF has `<arch>.pooling_type`, or an embedding architecture) instead of completion; vision from a
    projector or a vision tower (`<arch>.vision.block_count`, families clip / mllama); tools, insert and
    thinking from the template's variables (`.Tools`, `.Suffix`, `.Think` / `.Thinking` or think tags)."""
    arch = str(model_info.get("general.architecture") or "")
    embedding = arch in EMBEDDING_ARCHITECTURES or f"{arch}.pooling_type" in model_info
    caps = ["embedding" if embedding else "completion"]
    if has_projector or f"{arch}.vision.block_count" in model_info or VISION_FAMILIES & set(families or ()):
        caps.append("vision")
    if ".Tools" in template:
        caps.append("tools")
    if ".Suffix" in template:
        caps.append("insert")
    if ".Think" in template or "<think>" in template or arch in THINKING_ARCHITECTURES:
        caps.append("thinking")
    return caps



"""Moved to eldric/core/chat_templates.py (the registry's /v2/ door derives Ollama template layers with it too)."""

from eldric.core.chat_templates import (ARCHITECTURES, CHATML, FAMILIES, GEMMA, LLAMA2, LLAMA3, MISTRAL, PHI3,  # noqa: F401
                                        ZEPHYR, Family, TemplateChoice, choose_template, family_of, is_go_template)

"""Installing a file model into the backends this node serves (see worker_agent/installers/)."""

from __future__ import annotations

from pathlib import Path

from worker_agent.runtime import Agent


def install_entry(agent: Agent, entry: dict, files: dict[str, Path]) -> dict:
    """Install `entry` (whose files are at `files`) for every configured backend; return what each did."""
    return {}


def uninstall_entry(agent: Agent, entry: dict) -> None:
    """Remove `entry` from every backend it was installed into."""

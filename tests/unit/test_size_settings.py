"""Every byte count or byte rate a service reads from its environment takes the one size grammar
(eldric/core/settings.parse_size: a number or K/M/G/T); issue 22, finding 6: `ELDRIC_DISK_RESERVE_BYTES=50M`
was refused while the rate settings beside it took `20M`."""

from __future__ import annotations

import pytest

from controller.config import ControllerSettings
from eldric.core.settings import SettingsError
from registry.server import RegistrySettings
from worker_agent.settings import AgentSettings

AGENT = {"ELDRIC_WORKER_NAME": "gpu01", "ELDRIC_WORKER_TYPE": "inference"}
SERVICES = {AgentSettings: AGENT, ControllerSettings: {}, RegistrySettings: {}}
BYTE_WORDS = ("_bytes", "_rate", "_size", "min_free")


def _byte_fields():
    for cls, base in SERVICES.items():
        for field in cls.model_fields:
            if any(word in field for word in BYTE_WORDS):
                yield pytest.param(cls, base, field, id=f"{cls.__name__}.{field}")


@pytest.mark.parametrize("cls, base, field", list(_byte_fields()))
def test_every_byte_setting_takes_k_m_g(cls, base, field):
    name = cls.env_name(field)
    assert getattr(cls.from_env({**base, name: "50M"}), field) == 50 << 20
    assert getattr(cls.from_env({**base, name: "2G"}), field) == 2 << 30
    with pytest.raises(SettingsError, match=name):
        cls.from_env({**base, name: "50 furlongs"})


def test_the_disk_reserve_of_the_issue():
    assert AgentSettings.from_env({**AGENT, "ELDRIC_DISK_RESERVE_BYTES": "50M"}).disk_reserve_bytes == 52428800
    assert AgentSettings.from_env({**AGENT, "ELDRIC_PART_BYTES": "16M"}).part_bytes == 16 << 20
    with pytest.raises(SettingsError, match="ELDRIC_PART_BYTES"):
        AgentSettings.from_env({**AGENT, "ELDRIC_PART_BYTES": "0"})

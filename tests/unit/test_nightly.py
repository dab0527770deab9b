from __future__ import annotations

from pathlib import Path

import pytest
from celery.schedules import crontab

from api.evaluation import NIGHTLY_TASK_NAME, register_nightly
from api.runtime import Runtime
from core.errors import ConfigError
from tests.helpers import settings_for

pytestmark = pytest.mark.unit


def test_the_nightly_eval_is_scheduled_at_the_configured_utc_time(tmp_path: Path) -> None:
    runtime = Runtime(settings_for(tmp_path, queue="redis", eval_nightly_at="03:45"))
    register_nightly(runtime)
    entry = runtime.celery.conf.beat_schedule["nightly-evals"]
    assert entry["task"] == NIGHTLY_TASK_NAME and NIGHTLY_TASK_NAME in runtime.celery.tasks
    assert entry["schedule"] == crontab(hour=3, minute=45)
    assert runtime.celery.conf.timezone == "UTC"


def test_a_malformed_nightly_time_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TESSERA_EVAL_NIGHTLY_AT"):
        settings_for(tmp_path, eval_nightly_at="25:00")

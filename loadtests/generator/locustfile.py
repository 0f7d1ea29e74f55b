"""Locust entry point.

`medserve loadtest` runs this headless with MEDSERVE_LOADTEST_PLAN set: one open-loop
generator per model, stopped when every schedule has drained, records written at the end.
Run by hand for exploration, it gives closed-loop users for the profile in MEDSERVE_PROFILE
(default: smoke) and that profile's shape scales the user count:

    MEDSERVE_PROFILE=step locust -f loadtests/generator/locustfile.py --host http://127.0.0.1:8000
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from locust import LoadTestShape, events

from loadtests.generator.users import (
    CLOSED_WAIT_S,
    FINISHED,
    RECORDS,
    OpenLoopUser,
    closed_loop_user,
)
from loadtests.traffic.profiles import Plan, build_plan, load_profile
from serving.repository.store import DEFAULT_REPO, load_repository

_plan_file = os.environ.get("MEDSERVE_LOADTEST_PLAN")
OPEN_LOOP = _plan_file is not None
if _plan_file:
    PLAN = Plan.model_validate_json(Path(_plan_file).read_text())
else:
    PLAN, _ = build_plan(
        load_profile(os.environ.get("MEDSERVE_PROFILE", "smoke")),
        load_repository(Path(os.environ.get("MEDSERVE_MODEL_REPO", DEFAULT_REPO))), records="",
    )



def _user_classes() -> list[type]:
    classes: list[type] = []
    for model in sorted(PLAN.models):
        if OPEN_LOOP:
            cls = type(f"OpenLoop_{model.replace('-', '_')}", (OpenLoopUser,),
                       {"plan": PLAN, "model": model, "abstract": False})
        else:
            cls = closed_loop_user(model, PLAN)
        classes.append(cls)
    return classes


# Locust finds user classes among this module's globals: bind each once, by its own name.
_classes = _user_classes()
globals().update({cls.__name__: cls for cls in _classes})


class PlanShape(LoadTestShape):
    """Open loop: one generator per model until all have drained (the rate shape lives in
    the generators). Closed loop: the profile's shape scales the number of users."""

    def tick(self) -> tuple[int, float, list[type]] | None:
        t = self.get_run_time()
        profile = PLAN.profile
        if OPEN_LOOP:
            if len(FINISHED) == len(PLAN.models) or t > profile.duration_s + PLAN.drain_s + 10:
                return None
            return len(_classes), float(len(_classes)), _classes
        if t > profile.duration_s:
            return None
        shape = profile.shape.build(profile.duration_s, PLAN.diurnal)
        cycle = sum(CLOSED_WAIT_S) / 2
        users = math.ceil(sum(m.rate_rps for m in PLAN.models.values()) * cycle
                          * shape.multiplier(t))
        return max(users, len(_classes)), 10.0, _classes


@events.quitting.add_listener
def _write_records(environment: Any, **_: Any) -> None:
    if OPEN_LOOP and PLAN.records:
        with open(PLAN.records, "w") as out:
            for record in RECORDS:
                out.write(json.dumps(record.to_json()) + "\n")

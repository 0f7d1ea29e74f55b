"""Locust users: open-loop generators for SLO verdicts, closed-loop users for exploring.

Imported only inside the Locust process (gevent monkey-patches it). An open-loop generator
owns one model: it walks a precomputed Poisson schedule, sends each request in its own
greenlet, and fires Locust's request event with the latency from the intended start, so the
CSV and HTML reports carry the corrected numbers too.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from typing import Any

import gevent
import gevent.pool
import requests
from locust import HttpUser, User, between, task

from loadtests.generator.openloop import (
    InFlight,
    Record,
    arrivals,
    completed,
    refused,
    replayed,
)
from loadtests.generator.workloads import (
    Request,
    Requests,
    path_of,
    sse_data,
    token_times,
)
from loadtests.traffic.profiles import ModelPlan, Plan

RECORDS: list[Record] = []
FINISHED: set[str] = set()  # models whose schedule is done and drained
UNFINISHED = "no answer before the run ended"
ERROR_CHARS = 160  # a client error's class and message, e.g. the reset behind a ConnectionError


class Sender:
    """Sends one request of a model's workload and times it, from its intended start."""

    def __init__(self, name: str, spec: ModelPlan, plan: Plan, seed: int) -> None:
        self.name, self.spec, self.plan = name, spec, plan
        p = plan.profile
        self.draws = Requests(name, spec.kind, spec.adapters, p, seed)  # keys: this env only
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=p.max_in_flight)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def send(self, host: str, t0: float, intended: float, request: Request, fire: Any) -> Record:
        body, headers, tenant, priority = request
        url = host.rstrip("/") + path_of(self.spec.kind, self.name)
        lag = time.perf_counter() - t0 - intended
        status, error, ttft, gaps = 0, None, None, []
        try:
            with self.session.post(url, data=body, headers=headers, stream=True,
                                   timeout=self.plan.profile.request_timeout_s) as resp:
                status = resp.status_code
                if self.spec.kind == "chat" and resp.ok:
                    times = token_times([(time.perf_counter(), x) for x in resp.iter_lines()])
                    ttft = times[0] - t0 - intended if times else None
                    gaps = [b - a for a, b in itertools.pairwise(times)]
                else:
                    resp.content  # noqa: B018 - read the whole reply before stopping the clock
        except (requests.RequestException, ConnectionError, json.JSONDecodeError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]
        done = time.perf_counter() - t0
        record = completed(self.name, intended, done, status, error, ttft_s=ttft, itl_s=gaps,
                           priority=priority, tenant=tenant, lag_s=lag)
        failure = None if record.ok else Exception(error or f"HTTP {status}")
        fire(request_type="POST", name=self.name, response_time=(done - intended) * 1e3,
             response_length=len(body), exception=failure, context={"priority": priority})
        return record


class OpenLoopUser(User):
    """One model's open-loop generator; the locustfile makes one subclass per planned model."""

    abstract = True
    fixed_count = 1
    plan: Plan
    model: str

    @task
    def generate(self) -> None:
        if self.model in FINISHED:
            gevent.sleep(1.0)  # idle until the shape stops the run
            return
        spec, profile = self.plan.models[self.model], self.plan.profile
        shape = profile.shape.build(profile.duration_s, self.plan.diurnal)
        seed = profile.seed * 1000 + sorted(self.plan.models).index(self.model)
        sender = Sender(self.model, spec, self.plan, seed)
        gate = InFlight(profile.max_in_flight)
        pool = gevent.pool.Group()
        fire = self.environment.events.request.fire
        period = profile.repeat_s or profile.duration_s
        first = list(arrivals(lambda t: spec.rate_rps * shape.multiplier(t),
                              spec.rate_rps * shape.max_multiplier,
                              min(period, profile.duration_s), random.Random(seed)))
        t0 = time.perf_counter()

        def one(intended: float, request: Request) -> None:
            try:
                RECORDS.append(sender.send(self.host or "", t0, intended, request, fire))
            except gevent.GreenletExit:  # still running when the drain time ran out
                RECORDS.append(Record(self.model, intended, error=UNFINISHED))
            finally:
                gate.release()

        passes = 0
        for k, intended in replayed(first, period, profile.duration_s):
            if k != passes:
                passes = k
                sender.draws.restart()
            request = sender.draws.next()  # in schedule order: a replay draws the same
            delay = t0 + intended - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            if gate.try_acquire():
                pool.spawn(one, intended, request)
            else:
                RECORDS.append(refused(self.model, intended))
                fire(request_type="POST", name=self.model, response_time=0.0,
                     response_length=0, exception=Exception("not sent: in-flight cap"))
        pool.join(timeout=self.plan.drain_s)
        pool.kill(block=True, timeout=5.0)
        FINISHED.add(self.model)


CLOSED_WAIT_S = (0.5, 2.0)  # think time between a closed-loop user's requests


def closed_loop_user(model: str, plan: Plan) -> type[HttpUser]:
    """A closed-loop user for interactive runs: weight proportional to the model's rate."""

    class Closed(HttpUser):
        weight = max(1, round(plan.models[model].rate_rps * 100))
        wait_time = between(*CLOSED_WAIT_S)

        def on_start(self) -> None:
            self.sender = Sender(model, plan.models[model], plan, seed=random.randrange(1 << 30))

        @task
        def call(self) -> None:
            body, headers, _, _ = self.sender.draws.next()
            chat = self.sender.spec.kind == "chat"
            path = path_of(self.sender.spec.kind, model)
            with self.client.post(path, data=body, headers=headers, name=model, stream=chat,
                                  catch_response=True) as resp:
                if chat and resp.ok:
                    try:
                        list(sse_data(resp.iter_lines()))
                    except ConnectionError as exc:
                        resp.failure(str(exc))

    Closed.__name__ = Closed.__qualname__ = f"Closed_{model.replace('-', '_')}"
    return Closed

"""The locust user of scripts/load_test.py: `POST /v1/score`, one attempt a request, no wait.

Read from the environment (scripts/load_test.py sets them):

    LOAD_TEST_BODIES  a file of JSON request bodies, one a line; each user cycles through
                      them from its own starting line
    LOAD_TEST_HOSTS   the servers' base URLs, comma-separated: users are spread over them in
                      turn (client-side balancing over replicas on one host)
    LOAD_TEST_OUT     where every request's start (perf_counter s), time (ms), status and
                      fallback flag are written, as JSON, when locust stops

The time is taken around the client call, so it is the whole round trip as this user saw it.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task
from locust.env import Environment

BODIES = Path(os.environ["LOAD_TEST_BODIES"]).read_bytes().splitlines()
HOSTS = os.environ["LOAD_TEST_HOSTS"].split(",")
HEADERS = {"content-type": "application/json"}

_users = itertools.count()
#: (start s, time ms, status, fallback) per request
_records: list[tuple[float, float, int, bool]] = []


class ScoreUser(FastHttpUser):
    host = HOSTS[0]
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        n = next(_users)
        self.host = HOSTS[n % len(HOSTS)]  # read by FastHttpUser.__init__ for its client
        super().__init__(environment)
        start = n * 97 % len(BODIES)  # users do not move in step through the same attempts
        self.bodies = itertools.cycle(BODIES[start:] + BODIES[:start])

    @task
    def score(self) -> None:
        body = next(self.bodies)
        started = time.perf_counter()
        with self.client.post(
            "/v1/score", data=body, headers=HEADERS, catch_response=True
        ) as answer:
            ms = (time.perf_counter() - started) * 1e3
            fallback = False
            if answer.status_code == 200:
                fallback = bool(json.loads(answer.content or b"{}").get("fallback"))
            else:
                answer.failure(f"status {answer.status_code}")
        _records.append((started, ms, int(answer.status_code or 0), fallback))


@events.quitting.add_listener
def _write(environment: Environment, **_: Any) -> None:
    Path(os.environ["LOAD_TEST_OUT"]).write_text(json.dumps(_records))

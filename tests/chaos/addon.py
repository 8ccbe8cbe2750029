"""A mitmproxy addon: Stripe faults injected at random between the workers and the stand-in.

Run by the chaos run as `mitmdump --mode reverse:http://127.0.0.1:PORT -s addon.py --set
chaos_control=FILE --set chaos_log=FILE`. It is loaded by mitmproxy's own Python (its own
virtual environment), so it imports only mitmproxy and the standard library.

The control file is JSON the run rewrites at will: `{"rate": 0.1, "hang": 3.0, "kinds":
["drop", "timeout", "500", "429", "lost"]}` (rate 0 lets everything through). Each fault
appends one line `KIND METHOD PATH` to the log file, so the run counts them by kind:

- `drop`: the connection is closed before the request reaches Stripe (nothing happened);
- `timeout`: the request hangs past the client's timeout (`SEATS_STRIPE_TIMEOUT`), then the
  connection is closed; it never reaches Stripe;
- `500` and `429`: Stripe's own error bodies, the request never reaches Stripe;
- `lost`: the request reaches Stripe and is done there (a charge made, an intent
  created), then the answer is thrown away and the connection closed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import Any

from mitmproxy import ctx, http

ERRORS = {
    "500": (500, "api_error", "An unknown error occurred (chaos)."),
    "429": (429, "rate_limit_error", "Too many requests hit the API too quickly (chaos)."),
}


class Chaos:
    def __init__(self) -> None:
        self._control: dict[str, Any] = {"rate": 0.0}
        self._read_at = 0.0
        self._mtime = 0.0

    def load(self, loader: Any) -> None:
        loader.add_option("chaos_control", str, "", "JSON file: rate, hang, kinds")
        loader.add_option("chaos_log", str, "", "file where each fault is appended")

    def control(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._read_at > 0.2 and ctx.options.chaos_control:
            self._read_at = now
            try:
                mtime = os.stat(ctx.options.chaos_control).st_mtime
                if mtime != self._mtime:
                    with open(ctx.options.chaos_control) as control:
                        self._control = json.load(control)
                    self._mtime = mtime
            except (OSError, ValueError):
                pass  # keep the last good control while the file is rewritten
        return self._control

    def note(self, kind: str, flow: http.HTTPFlow) -> None:
        if ctx.options.chaos_log:
            with open(ctx.options.chaos_log, "a") as log:
                log.write(f"{kind} {flow.request.method} {flow.request.path.split('?')[0]}\n")

    async def request(self, flow: http.HTTPFlow) -> None:
        control = self.control()
        if not flow.request.path.startswith("/v1/"):
            return
        if random.random() >= float(control.get("rate", 0)):
            return
        kinds = [
            kind
            for kind in control.get("kinds", ["drop", "timeout", "500", "429", "lost"])
            if kind != "lost" or flow.request.method == "POST"
        ]
        if not kinds:
            return
        kind = random.choice(kinds)
        self.note(kind, flow)
        if kind == "drop":
            flow.kill()
        elif kind == "timeout":
            await asyncio.sleep(float(control.get("hang", 3.0)))
            flow.kill()
        elif kind in ERRORS:
            status, error_type, message = ERRORS[kind]
            flow.response = http.Response.make(
                status,
                json.dumps({"error": {"type": error_type, "message": message}}),
                {"Content-Type": "application/json", "Request-Id": "req_chaos"},
            )
        else:  # lost: let Stripe do it, then lose the answer
            flow.metadata["chaos_lost"] = True

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get("chaos_lost"):
            flow.kill()


addons = [Chaos()]

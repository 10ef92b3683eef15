"""Signs schemathesis in as the fuzzing user for every case, and again when
a case ended the session (signing out, revoking the session): the fuzzing
runs signed in throughout instead of meeting only 401 after such a case.

It calls from 127.0.0.2: the fuzzer's own failed sign-ins from 127.0.0.1
rightly lock that address out of signing in. Generated project settings
keep only the process names the document cannot state (below)."""

import http.client
import json
import os
import re
from urllib.parse import urlsplit

import schemathesis

BASE = urlsplit(os.environ["FUZZ_BASE_URL"])
EMAIL = os.environ["FUZZ_EMAIL"]
PASSWORD = os.environ["FUZZ_PASSWORD"]


def _call(method, path, body=None, token=None):
    connection = http.client.HTTPConnection(BASE.hostname, BASE.port, timeout=10, source_address=("127.0.0.2", 0))
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if response.status == 200 else None
    finally:
        connection.close()


# Checked every two seconds; a case's own 401 (a wrong password, a bad
# signature) is an answer to judge, not a reason to sign in again.
@schemathesis.auth(refresh_interval=2, retry_on=[])
class SignedIn:
    token = None

    def get(self, case, context):
        if self.token is None or _call("GET", "/v1/users/me", token=self.token)[0] == 401:
            status, body = _call("POST", "/v1/auth:login", {"email": EMAIL, "password": PASSWORD})
            if status != 200:
                raise RuntimeError(f"the fuzzing user cannot sign in: {status}")
            self.token = body["tokens"]["accessToken"]
        return self.token

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


# What Open API 3.0 cannot say of a project's process types: the names
# (the map's keys) a process may have. The document states it in words and
# as `x-key-pattern`; generated settings keep only keys that match it, so
# the fuzzing judges the rest of the request (the coverage phase, which
# runs no hooks, is left out for this operation in scripts/api-fuzz.toml;
# tests/processes.rs drives the refusals of bad names).
PROCESS_NAME = re.compile(
    r"^(?:[a-qs-vx-z][a-z0-9-]{0,29}|w(?:|[a-df-z0-9-][a-z0-9-]{0,28}|e(?:|[ac-z0-9-][a-z0-9-]{0,27}"
    r"|b[a-z0-9-]{1,27}))|r(?:|[a-df-z0-9-][a-z0-9-]{0,28}|e(?:|[a-km-z0-9-][a-z0-9-]{0,27}"
    r"|l(?:|[a-df-z0-9-][a-z0-9-]{0,26}|e(?:|[b-z0-9-][a-z0-9-]{0,25}|a(?:|[a-rt-z0-9-][a-z0-9-]{0,24}"
    r"|s(?:|[a-df-z0-9-][a-z0-9-]{0,23}|e[a-z0-9-]{1,23})))))))$"
)


@schemathesis.hook
def map_body(context, body):
    if isinstance(body, dict) and isinstance(body.get("processTypes"), dict):
        body["processTypes"] = {
            name: process for name, process in body["processTypes"].items() if PROCESS_NAME.match(name)
        }
    return body

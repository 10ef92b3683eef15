"""Signs schemathesis in as the fuzzing user for every case, and again when
a case ended the session (signing out, revoking the session): the fuzzing
runs signed in throughout instead of meeting only 401 after such a case.

It calls from 127.0.0.2: the fuzzer's own failed sign-ins from 127.0.0.1
rightly lock that address out of signing in. Generated project settings
are also brought within what no schema can say of process types (below)."""

import http.client
import json
import os
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


# What JSON Schema cannot say of a project's process types — each name
# once, not web or release, a schedule that croner reads, a time zone only
# with a schedule — is checked by the project service (tests/processes.rs
# drives those refusals); generated settings are brought within it, so
# the fuzzing judges the rest of the request.
@schemathesis.hook
def map_body(context, body):
    if not isinstance(body, dict) or not isinstance(body.get("processTypes"), list):
        return body
    kept, names = [], set()
    for process in body["processTypes"]:
        if not isinstance(process, dict):
            continue
        name = process.get("name")
        if name in names or name in ("web", "release"):
            continue
        names.add(name)
        if process.get("schedule"):
            process["schedule"] = "0 3 * * *"
            process["timeZone"] = "Europe/Paris" if process.get("timeZone") else ""
        else:
            process["timeZone"] = ""
        kept.append(process)
    body["processTypes"] = kept
    return body

"""schemathesis hooks for the run in tests/openapi/schemathesis.sh.

The run authenticates with one admin key. The fuzzer learns ids from answers (the key list
includes that key), and a generated DELETE, PATCH, PUT or rotate aimed at it would revoke,
demote, expire or rotate the run's own credential, leaving every later request a 401 and
the rest of the API untested. So a request that would change the run's own key is aimed at
an id no key has instead (the server answers 404, which the document lists). Reading the
key is left alone. Nothing else is changed.
"""

import os
import uuid

import schemathesis

PROTECTED_ID = os.environ["KEYGATE_PROTECTED_KEY_ID"]


def _names_protected(value):
    return isinstance(value, str) and value.strip().lower() == PROTECTED_ID


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.method.upper() in ("GET", "HEAD", "OPTIONS"):
        return
    elsewhere = str(uuid.uuid4())
    for where in (case.path_parameters, case.query):
        if isinstance(where, dict) and _names_protected(where.get("id")):
            where["id"] = elsewhere
    if isinstance(case.body, dict) and _names_protected(case.body.get("id")):
        case.body["id"] = elsewhere

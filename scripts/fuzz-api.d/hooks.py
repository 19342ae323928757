"""Schemathesis hooks of our own, loaded by scripts/fuzz-api (SCHEMATHESIS_HOOKS).

no_token_text: no answer may carry token text, neither the API bearer token nor any value
the request sent inside a `token` object (the IM1 token fields of a PUT). To tell token
text from our own words (field names and messages share a vocabulary with generated
values), every non-empty string inside a request's `token` is marked with MARK just before
it is sent; an answer containing MARK carries token text.
"""
import os

import schemathesis

BEARER = os.environ["IM1_FUZZ_API_TOKEN"]
MARK = "im1tok"


def _mark(value):
    if isinstance(value, str):
        # Idempotent: a case is sent again when it is shrunk or replayed.
        return value if not value or value.startswith(MARK) else MARK + value
    if isinstance(value, dict):
        return {k: _mark(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark(v) for v in value]
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if isinstance(body, dict) and "token" in body:
        body["token"] = _mark(body["token"])


@schemathesis.check
def no_token_text(ctx, response, case):
    """No answer carries the bearer token or a token field the request sent."""
    text = response.content.decode("utf-8", "replace")
    if BEARER in text:
        raise AssertionError("the API bearer token appears in an answer")
    if MARK in text:
        raise AssertionError("a token field of the request appears in the answer")

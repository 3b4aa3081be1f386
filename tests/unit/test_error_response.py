"""service.errors.error_response: the one place an error becomes an HTTP answer."""

from __future__ import annotations

import json

from service.errors import BodyTooLarge, QueueFull, ServiceError, Unauthorized, error_response, kinds
from service.oip import ModelNotFound


def body(response) -> dict:
    return json.loads(response.body)


def test_our_body_names_the_kind_and_keeps_the_errors_headers():
    r = error_response(QueueFull("queue full; retry"))
    assert r.status_code == 503 and body(r) == {"error": "queue full; retry", "kind": "queue_full"}
    assert r.headers["retry-after"] == "1"


def test_the_protocol_body_is_error_only_with_the_same_status_and_headers():
    r = error_response(ModelNotFound("unknown model 'x'"), protocol=True)
    assert r.status_code == 404 and body(r) == {"error": "unknown model 'x'"}
    r = error_response(Unauthorized("no key"), protocol=True)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_headers_given_are_added_to_the_errors_own():
    r = error_response(BodyTooLarge("too big"), headers={"Connection": "close"})
    assert r.status_code == 413 and r.headers["connection"] == "close" and body(r)["kind"] == "body_too_large"


def test_a_framework_error_keeps_its_status_and_kind():
    r = error_response(ServiceError("Method Not Allowed", status=405, kind="method_not_allowed"))
    assert r.status_code == 405 and body(r) == {"error": "Method Not Allowed", "kind": "method_not_allowed"}
    assert ServiceError("x").status == 500 and ServiceError("x").kind == "internal"  # the class is untouched


def test_every_kind_is_one_class():
    known = kinds()
    assert known["unauthorized"] is Unauthorized and known["model_not_found"] is ModelNotFound
    assert all(cls.kind == kind for kind, cls in known.items())

"""Schema-driven fuzzing of the REST API (schemathesis over our own OpenAPI document): whatever a
client sends that the schema allows (and much that it does not), the server answers with a status
and a body its schema documents, never a 5xx."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from faceveil.web import ServeConfig, create_app  # noqa: E402

APP = create_app(ServeConfig())
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


def test_schema_is_valid_openapi():
    doc = APP.openapi()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/protect", "/api/recover", "/api/inspect", "/api/detect", "/api/veils", "/healthz"):
        assert path in doc["paths"], path
    body = doc["paths"]["/api/protect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(body["required"]) == {"image", "password"}
    assert {"403"} <= set(doc["paths"]["/api/recover"]["post"]["responses"])


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case):
    # Every check but "schema-valid data is accepted": OpenAPI cannot say that a binary field must
    # be a decodable image, so random bytes are schema-valid and rightly answered 415/422.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])

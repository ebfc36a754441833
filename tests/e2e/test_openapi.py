"""`/api/openapi.json`: a valid OpenAPI 3.1 document listing exactly the routes the app serves."""

from __future__ import annotations

from openapi_spec_validator import validate

from http_api.openapi import OPS
from tests.support.harness import ADMIN


def _served(app) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route the running app answers; HEAD is implied by GET."""
    return {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}


async def test_openapi_document_validates_and_matches_the_route_table(make_harness):
    """The spec validates as OpenAPI 3.1, every served route is in it, and nothing else is."""
    h = await make_harness(auth={"allow_anonymous_on_loopback": False})
    status, spec = await h.get("/api/openapi.json")  # public, like the console page
    assert status == 200
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    app = h.server._runner.app
    assert documented == _served(app)
    assert len(documented) >= 25


async def test_every_route_has_a_summary_and_its_body_model(make_harness):
    """Each view is described in OPS (no docstring fallback), and bodies reference the pydantic models."""
    h = await make_harness()
    app = h.server._runner.app
    missing = sorted(r.handler.__qualname__ for r in app.router.routes() if r.method != "HEAD" and r.handler not in OPS)
    assert missing == []
    _, spec = await h.get("/api/openapi.json")
    call = spec["paths"]["/api/mqtt/call"]["post"]
    assert call["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/CallRequest"}
    assert "device_id" in spec["components"]["schemas"]["CallRequest"]["required"]
    create = spec["paths"]["/api/admin/{kind}"]["post"]
    assert len(create["requestBody"]["content"]["application/json"]["schema"]["oneOf"]) == 3
    kind = create["parameters"][0]
    assert kind["name"] == "kind"
    assert kind["schema"]["enum"] == ["households", "residents", "devices"]
    assert spec["paths"]["/healthz"]["get"]["security"] == []
    assert "security" not in spec["paths"]["/api/calls"]["get"]  # the document-wide bearer applies


async def test_documented_example_calls_work(make_harness):
    """The documented query parameters are the ones the view reads: history filters by household."""
    h = await make_harness()
    await h.start_call("1")
    status, body = await h.get("/api/calls?household_number=102", ADMIN)
    assert status == 200
    assert body["data"] == []
    status, body = await h.get("/api/calls?household_number=101", ADMIN)
    assert len(body["data"]) == 1

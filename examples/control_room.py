"""The control room (clientlb.admin) mounted in a Starlette, a FastAPI and a Litestar app.

Each application serves its own routes and, under /lb, the dashboard and the control API of
the same registry; a script then drains an endpoint through the API, with the token.

Run: python examples/control_room.py      (needs: pip install 'clientlb[admin]' fastapi litestar)
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import httpx
import uvicorn
from _local_backends import start

import clientlb

backends = start("web-1", "web-2")

# --8<-- [start:registry]
from clientlb.admin import create_app  # noqa: E402 - needs the admin extra

registry = clientlb.Registry()
registry.create("web", [b.address for b in backends], strategy="round_robin")
token = secrets.token_urlsafe(24)  # in production: os.environ["CLIENTLB_ADMIN_TOKEN"]
# --8<-- [end:registry]


def starlette_app() -> Any:
    # --8<-- [start:starlette]
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("my service\n")

    app = Starlette(routes=[
        Route("/", home),
        Mount("/lb", app=create_app(registry, token=token)),
    ])
    # --8<-- [end:starlette]
    return app


def fastapi_app() -> Any:
    # --8<-- [start:fastapi]
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/")
    def home() -> str:
        return "my service"

    app.mount("/lb", create_app(registry, token=token))
    # --8<-- [end:fastapi]
    return app


def litestar_app() -> Any:
    # --8<-- [start:litestar]
    from litestar import Litestar, asgi, get
    from litestar.types import Receive, Scope, Send

    control_room = create_app(registry, token=token)

    @get("/")
    async def home() -> str:
        return "my service"

    @asgi("/lb", is_mount=True, copy_scope=True)
    async def lb(scope: Scope, receive: Receive, send: Send) -> None:
        await control_room(scope, receive, send)  # type: ignore[arg-type]

    app = Litestar(route_handlers=[home, lb])
    # --8<-- [end:litestar]
    return app


def serve(app: Any) -> tuple[uvicorn.Server, str]:
    """Serve ``app`` on a free port of 127.0.0.1 in a thread."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


for framework, make in [("starlette", starlette_app), ("fastapi", fastapi_app),
                        ("litestar", litestar_app)]:
    server, url = serve(make())
    page = httpx.get(f"{url}/lb/")
    assert 'href="/lb/static/dashboard.css"' in page.text  # links follow the mount point
    # --8<-- [start:api]
    address = backends[0].address
    api = httpx.Client(base_url=f"{url}/lb", headers={"Authorization": f"Bearer {token}"})
    drained = api.post(f"/api/services/web/endpoints/{address}/drain").json()
    web = api.get("/api/services/web").json()
    refused = httpx.post(f"{url}/lb/api/services/web/endpoints/{address}/undrain")
    api.post(f"/api/services/web/endpoints/{address}/undrain")
    # --8<-- [end:api]
    states = {e["address"]: e["state"] for e in web["endpoints"]}
    print(f"{framework:9} {httpx.get(url).status_code} home, dashboard {page.status_code}, "
          f"drain -> {drained['state']} ({states[address]}), without the token -> "
          f"{refused.status_code}")
    api.close()
    server.should_exit = True

registry.close()
for b in backends:
    b.close()
print("ok")

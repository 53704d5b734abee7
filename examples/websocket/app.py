"""The seed's websocket example in Python: a FastAPI app, one Hub per worker process.

node-pm2-events:                     here:
  pm2.addEventListener(channel)        hub.relay("news.*")
  pm2.dispatch(channel, data)          await hub.broadcast(channel, data)   (POST /api/dispatch)
  wsHandler + preHandler: wssAuth      /api/wss: hub.serve(websocket), authorize=check_token

Run under circus (examples/websocket/circus.ini: 4 processes sharing one port
through a circus socket), or alone:

    CIRCUS_EVENTS_DIR=... uvicorn examples.websocket.app:app --port 8000

Tokens are a fixed demo table (``?token=alice``); use your session or JWT check.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import HTMLResponse, Response

import circus_events.websocket
from circus_events import AsyncBus
from circus_events.websocket import Hub

#: Demo tokens -> user names. A real app checks a session cookie or a JWT here.
TOKENS = {"alice": "alice", "bob": "bob", "admin": "admin"}


def check_token(websocket: WebSocket) -> str | None:
    """The seed's wssAuth: the principal, or None (the hub closes with 1008)."""
    return TOKENS.get(websocket.query_params.get("token", ""))


def may_publish(user: str, channel: str) -> bool:
    """Browsers publish to chat rooms; only admin to news."""
    return channel.startswith("chat.") or (user == "admin" and channel.startswith("news."))


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Endpoint and host from CIRCUS_EVENTS_* (circus passes them); a worker id that
    # names the app (under `python -m uvicorn` the default would say "__main__").
    host = os.environ.get("CIRCUS_EVENTS_HOST") or socket.gethostname()
    async with AsyncBus(worker=f"{host}/websocket-example/{os.getpid()}") as bus:
        hub = Hub(bus, authorize=check_token, can_publish=may_publish)
        hub.relay("news.*")  # pm2.addEventListener: every socket here gets news.*
        app.state.hub = hub
        yield
        await hub.close()


app = FastAPI(lifespan=lifespan)


@app.websocket("/api/wss")
async def wss(websocket: WebSocket) -> None:
    await websocket.app.state.hub.serve(websocket)


@app.post("/api/dispatch/{channel}")
async def dispatch(channel: str, request: Request) -> dict[str, Any]:
    """pm2.dispatch: to every socket on every host (and every worker on the bus)."""
    if request.query_params.get("token") != "admin":
        raise HTTPException(403, "admin only")
    await request.app.state.hub.broadcast(channel, await request.json())
    return {"ok": True, "worker": os.getpid()}


@app.get("/client.js")
async def client_js() -> Response:
    return Response(circus_events.websocket.client_js(), media_type="text/javascript")


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE


PAGE = """<!doctype html>
<meta charset="utf-8"><title>circus-events websocket example</title>
<h1>news and chat, from every worker on every host</h1>
<p>socket: <code id="sid">connecting</code></p>
<form id="say"><input id="text" placeholder="say something in chat.lobby">
<button>send</button></form>
<ul id="log"></ul>
<script src="client.js"></script>
<script>
const url = new URL("api/wss", location.href);
url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
url.search = location.search || "?token=alice";
const events = new CircusEvents(url.href);
const log = (text) => {
  const li = document.createElement("li");
  li.textContent = text;
  document.getElementById("log").prepend(li);
};
events.addEventListener("open", (e) => { document.getElementById("sid").textContent = e.detail; });
events.addEventListener("event", (e) => {   // relayed news.* and subscribed chat.*
  const f = e.detail;
  log(`${f.host} ${f.origin} ${f.channel}: ${JSON.stringify(f.data)}`);
});
events.addEventListener("error", (e) => log("error: " + e.detail.message));
events.subscribe("chat.*");
document.getElementById("say").onsubmit = (e) => {
  e.preventDefault();
  events.publish("chat.lobby", {text: document.getElementById("text").value});
};
</script>
"""

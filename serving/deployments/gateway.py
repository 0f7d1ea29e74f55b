"""Gateway deployment: Serve's ingress. The request path is `serving.gateway.router.Router`;
the FastAPI app it serves is built by `serving.http.app.create_app`."""

from __future__ import annotations

from fastapi import FastAPI
from ray import serve

from serving.gateway.router import Router
from serving.http.app import create_app


@serve.deployment
@serve.ingress()
class Gateway(Router):
    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self)

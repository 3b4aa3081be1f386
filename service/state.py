"""What a front end holds: settings, its engine connection and its request pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.engine_client import EngineClient
from service.errors import NotReady
from service.pipeline import Pipeline
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    client: EngineClient
    pipeline: Pipeline

    @property
    def ready(self) -> bool:
        return self.client.ready

    def not_ready_reason(self) -> str:
        """Why this front end cannot serve now (the one wording of /readyz, 503s and the v2 routes)."""
        return self.client.not_ready_reason() or "ready"

    def not_ready(self) -> NotReady:
        """The 503 every route answers while the model cannot serve, with the reason."""
        return NotReady(f"the model is not ready: {self.not_ready_reason()}; see /readyz")

    def observe(self, event: tuple) -> None:
        self.client.observe(event)


async def get_state(request: Request) -> ServiceState:
    # async: FastAPI runs a plain ``def`` dependency on its thread pool, a thread hop per request
    # (about a tenth of a front end's GIL time under load) just to read an attribute.
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]

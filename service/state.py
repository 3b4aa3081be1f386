"""What the running service holds: settings, the chosen backend, the batcher, the pipeline, metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.backends import Selection
from service.batcher import Batcher
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.settings import Settings


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    selection: Selection | None = None
    batcher: Batcher | None = None
    pipeline: Pipeline | None = None
    warm: bool = False
    startup_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.warm and self.batcher is not None and self.batcher.healthy


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]

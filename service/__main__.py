"""Run the service: ``python -m service [--flags]`` (every flag is also an ALEXNET_* variable).

python -m service --host 0.0.0.0 --port 8000 --onnx artifacts/alexnet.onnx
ALEXNET_BACKEND=torch ALEXNET_DEVICE=cuda python -m service
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing

import uvicorn
from pydantic import ValidationError

from service.settings import Settings

# Secrets come from the environment only: a flag would show in `ps` and shell history.
ENV_ONLY = {"api_key"}


def _flag_type(annotation):
    if annotation is bool:
        return lambda text: text.lower() in ("1", "true", "yes", "on")
    return str  # pydantic converts and validates


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="AlexNet classification service. Each flag may also be set as ALEXNET_<NAME>; "
        "the API key only as ALEXNET_API_KEY.",
    )
    for name, field in Settings.model_fields.items():
        if name in ENV_ONLY:
            continue
        choices = None
        if typing.get_origin(field.annotation) is typing.Literal:
            choices = typing.get_args(field.annotation)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            choices=choices,
            type=_flag_type(field.annotation),
            help=f"{field.description} (default: {field.default}; env ALEXNET_{name.upper()})",
        )
    return parser


def settings_from_args(argv: list[str] | None) -> Settings:
    """Flags given on the command line override the environment, which overrides defaults."""
    return Settings(**vars(get_args_parser().parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_from_args(argv)
    except ValidationError as exc:
        print(f"invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn's factory (and each worker process) rebuilds Settings from the environment.
    values = settings.model_dump(exclude_none=True)
    if settings.api_key is not None:
        values["api_key"] = settings.api_key.get_secret_value()
    os.environ.update({"ALEXNET_" + k.upper(): str(v) for k, v in values.items()})
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        access_log=settings.log_level == "debug",
        limit_concurrency=settings.max_connections or None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

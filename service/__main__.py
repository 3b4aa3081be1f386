"""Run the service: ``python -m service [--flags]`` (every flag is also an ALEXNET_* variable).

One engine process and ``--http-workers`` HTTP front ends (service.supervisor explains the layout).

python -m service --host 0.0.0.0 --port 8000 --onnx artifacts/alexnet.onnx
ALEXNET_BACKEND=torch ALEXNET_DEVICE=cuda python -m service
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import logging
import os
import subprocess
import sys
import typing
from collections.abc import Callable, Mapping

from pydantic import ValidationError

from service.process import EXIT_FAILED, EXIT_INVALID_SETTINGS
from service.settings import ENV_ONLY, ENV_PREFIX, Settings, default_of, setting_name
from service.supervisor import Supervisor


class _RefuseSecretFlag(argparse.Action):
    """``--api-key``: refused with the variable to use instead, and without echoing the value given."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        variable = ENV_PREFIX + self.dest.upper()
        parser.error(
            f"{self.option_strings[0]} is not accepted: a secret on the command line shows in `ps` and shell history; "
            f"set {variable} in the environment instead"
        )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="AlexNet classification service. Each flag may also be set as ALEXNET_<NAME>; "
        "the API key only as ALEXNET_API_KEY.",
    )
    for name, field in Settings.model_fields.items():
        if name in ENV_ONLY:
            flag = "--" + name.replace("_", "-")
            parser.add_argument(
                flag, dest=name, nargs="?", default=argparse.SUPPRESS, action=_RefuseSecretFlag, help=argparse.SUPPRESS
            )
            continue
        choices = None
        if typing.get_origin(field.annotation) is typing.Literal:
            choices = typing.get_args(field.annotation)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            choices=choices,
            # A switch still takes its value (--warmup false): say so, or `--warmup` alone looks right.
            metavar="{true,false}" if field.annotation is bool else None,
            type=str,  # pydantic parses and validates the text, as it does the environment's
            help=f"{field.description} (default: {as_typed(default_of(name))}; env ALEXNET_{name.upper()})",
        )
    return parser


def as_typed(default: object) -> str:
    """A default as a flag or variable would give it: true/false, none, '' (not Python's True, None)."""
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default) if default != "" else "''"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per ALEXNET_* variable that nothing reads (a typo would otherwise do nothing),
    naming the closest setting. Names only: a value may be a secret."""
    # Compared without the prefix, which every name shares and which would make any two "close".
    described = {name.upper(): setting_name(name) for name in Settings.model_fields}
    warnings = []
    for variable in sorted(environ):
        upper = variable.upper()  # pydantic-settings reads the names case-insensitively
        if not upper.startswith(ENV_PREFIX) or upper.removeprefix(ENV_PREFIX) in described:
            continue
        close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), sorted(described), n=1)
        hint = f"; did you mean {described[close[0]]}?" if close else ""
        warnings.append(f"warning: {variable} is not a setting and is ignored{hint}")
    return warnings


def settings_from_args(argv: list[str] | None) -> Settings:
    """Flags given on the command line override the environment, which overrides defaults."""
    return Settings(**vars(get_args_parser().parse_args(argv)))


def explain(exc: ValidationError) -> str:
    """One line per invalid setting, naming its flag and variable and the text given (never a secret's).

    A setting of several types (``--http-workers``: a number or auto) fails once per type: one line,
    the reasons joined by "; or"."""
    rules: list[str] = []  # rules across settings
    reasons: dict[str, list[str]] = {}
    given: dict[str, object] = {}
    for error in exc.errors():
        if error["type"] == "default_factory_not_called":  # --onnx/--engine: defaults from a setting that failed
            continue
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:
            rules.append(message)
            continue
        name = str(error["loc"][0])
        reasons.setdefault(name, []).append(message)
        given[name] = error["input"]
    lines = []
    for name, messages in reasons.items():
        text = "" if name in ENV_ONLY else f", got {given[name]!r}"
        lines.append(f"  {setting_name(name)}: {'; or '.join(messages)}{text}")
    lines += [f"  {rule}" for rule in rules]
    return "invalid settings (python -m service --help lists them):\n" + "\n".join(lines)


def cuda_visible() -> bool:
    """``torch.cuda.is_available()``, asked in a short child process: imported here, torch (hundreds of
    MB) and an initialised CUDA driver would stay in the supervisor for the server's whole life."""
    probe = [sys.executable, "-c", "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=120, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def cpu_serves_fp16(settings: Settings) -> bool:
    """``--precision fp16`` can run on the CPU in one case: ONNX Runtime serving an ONNX file that is
    itself fp16 (the backends refuse fp16 on the CPU otherwise: PyTorch's CPU path runs fp32, and an
    fp32 ONNX would be served in fp32)."""
    if settings.backend not in ("auto", "onnxruntime") or not settings.onnx.is_file():
        return False
    from export.onnx_metadata import read_metadata  # onnx: only for this rare question

    try:
        return read_metadata(settings.onnx).precision == "fp16"
    except ValueError:  # not ONNX: the engine says so when it loads it
        return False


def needs_a_gpu(settings: Settings, cuda_check: Callable[[], bool] | None = None) -> str | None:
    """Why the settings cannot run on this host, as far as the settings alone need a CUDA GPU; None when
    they can (or might: the rest is for the engine to find out, and the server exits 3 if it cannot).
    ``cuda_check``: how to ask (default ``cuda_visible``, a child process); a process that has torch
    loaded anyway (the entrypoint) asks in-process."""
    asked = [
        setting_name(name, value)
        for name, value in (("device", "cuda"), ("backend", "tensorrt"), ("decode", "gpu"), ("precision", "fp16"))
        if getattr(settings, name) == value and (name != "precision" or not cpu_serves_fp16(settings))
    ]
    if not asked:
        return None
    if settings.device == "cpu":  # with --backend tensorrt, --decode gpu or --precision fp16
        return f"{asked[0]} needs a CUDA GPU, but {setting_name('device', 'cpu')} keeps the model on the CPU"
    if (cuda_check or cuda_visible)():
        return None
    needs = "needs" if len(asked) == 1 else "need"
    return f"{' and '.join(asked)} {needs} a CUDA GPU, but PyTorch sees none on this host; leave it at auto"


def refusal(
    settings: Settings, onnx_made_later: bool = False, cuda_check: Callable[[], bool] | None = None
) -> str | None:
    """Why valid settings still cannot run at all, in one line naming the setting, or None; checked
    before any process starts (exit 2). ``onnx_made_later``: the entrypoint exports a missing ONNX;
    ``cuda_check``: as for ``needs_a_gpu``."""
    named = [name for name in ("onnx", "model_dir") if name in settings.model_fields_set]
    if not onnx_made_later and settings.backend == "auto" and named and not settings.onnx.is_file():
        # Named by hand and missing (a typo): auto would start PyTorch with whatever weights it finds,
        # answering 200 with another model's answers. (With a backend named by hand the engine fails
        # to load the model, saying why, and the server exits 3.)
        if named[0] == "onnx" and settings.onnx.is_dir():
            return (
                f"{setting_name('onnx')}: {settings.onnx} is a folder; pass the ONNX file, e.g. "
                f"{settings.onnx / 'alexnet.onnx'}"
            )
        if named[0] == "onnx":
            return (
                f"{setting_name('onnx')}: {settings.onnx} is not a file; build it with "
                f"`python export/to_onnx.py --out {settings.onnx}`, or leave the setting out"
            )
        return (
            f"{setting_name('model_dir')}: {settings.model_dir} holds no {settings.onnx.name}; start with "
            f"`python -m service.entrypoint`, which exports it there, or build it with "
            f"`python export/to_onnx.py --out {settings.onnx}`"
        )
    if settings.checkpoint is not None and not settings.checkpoint.is_file():
        # A typo: the torch backend would fail to load it, the ONNX backends would never look at it.
        return (
            f"{setting_name('checkpoint')}: {settings.checkpoint} is not a file; pass our checkpoint "
            "(python -m model.weights --help) or torchvision's alexnet-owt-*.pth, or leave the setting out"
        )
    return needs_a_gpu(settings, cuda_check)


def exposure_warning(settings: Settings) -> str | None:
    """What to warn of when the server listens beyond this host with no API key (``make serve`` and the
    images listen on 0.0.0.0: inside a container that is their only way out); None otherwise."""
    if settings.api_key is not None or settings.host == "localhost":
        return None
    try:
        if ipaddress.ip_address(settings.host).is_loopback:
            return None
    except ValueError:  # a host name: it may resolve to any interface
        pass
    where = "every interface" if settings.host in ("0.0.0.0", "::") else settings.host
    return (
        f"listening on {where} with no API key: anyone who can reach port {settings.port} can use this server; "
        f"set {ENV_PREFIX}API_KEY (clients then send 'Authorization: Bearer <key>'), or --host 127.0.0.1 for this "
        "host only"
    )


def main(argv: list[str] | None = None) -> int:
    for warning in unknown_variables(os.environ):
        print(warning, file=sys.stderr)
    try:
        settings = settings_from_args(argv)
    except ValidationError as exc:
        print(explain(exc), file=sys.stderr)
        return EXIT_INVALID_SETTINGS
    if (why := refusal(settings)) is not None:
        print(why, file=sys.stderr)
        return EXIT_INVALID_SETTINGS
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s[supervisor]: %(message)s"
    )
    if (exposed := exposure_warning(settings)) is not None:
        logging.getLogger("service").warning(exposed)
    # The engine and the front ends are new processes: they read their Settings from this environment.
    values = settings.model_dump(exclude_none=True)
    if settings.api_key is not None:
        values["api_key"] = settings.api_key.get_secret_value()
    os.environ.update({ENV_PREFIX + k.upper(): str(v) for k, v in values.items()})
    try:
        return Supervisor(settings).run()
    except OSError as exc:  # the port is taken, the host does not exist
        print(f"cannot listen on {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())

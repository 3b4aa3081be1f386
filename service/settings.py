"""Every setting of the service, in one typed place: environment (``ALEXNET_*``) and CLI flags.

``python -m service --help`` lists each field as a flag (``max_batch_size`` -> ``--max-batch-size``);
a flag wins over the environment, which wins over the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.cpus import usable_cpus

BackendName = Literal["auto", "tensorrt", "onnxruntime", "torch"]
ArchName = Literal["torchvision", "alexnet2012"]  # model.alexnet.ARCHS (a test keeps the two in step)
ENV_PREFIX = "ALEXNET_"
# Secrets come from the environment only: a flag would show in `ps` and shell history.
ENV_ONLY = frozenset({"api_key"})
API_KEY_ENV = ENV_PREFIX + "API_KEY"  # also what the load tools send (loadtest/auth.py)
DEFAULT_MODEL_DIR = Path("artifacts")
# The model files' names in --model-dir (the entrypoint exports and builds them there).
ONNX_NAME = "alexnet.onnx"
ENGINE_NAME = "alexnet.plan"


def setting_name(name: str, value: object = None) -> str:
    """A setting as the user writes it: ``--max-batch-size / ALEXNET_MAX_BATCH_SIZE``, or with a value
    ``--device cuda (ALEXNET_DEVICE=cuda)`` (a secret: its variable alone, never its value), for messages
    that would otherwise name the field ``max_batch_size``."""
    variable = ENV_PREFIX + name.upper()
    flag = "--" + name.replace("_", "-")
    if name in ENV_ONLY:
        return variable
    return f"{flag} / {variable}" if value is None else f"{flag} {value} ({variable}={value})"


def _in_model_dir(validated: Mapping[str, Any], name: str) -> Path:
    """A default file of the model directory, from the settings validated so far (pydantic passes them)."""
    return Path(validated.get("model_dir", DEFAULT_MODEL_DIR)) / name


def default_of(name: str) -> object:
    """A setting's default as ``--help`` and the README state it: one derived from another setting
    (``--onnx`` from ``--model-dir``) derived from that one's default."""
    field = Settings.model_fields[name]
    if field.default_factory is None:
        return field.default
    defaults = {other: f.default for other, f in Settings.model_fields.items() if f.default_factory is None}
    return field.get_default(call_default_factory=True, validated_data=defaults)


def clean_api_key(value: str, blank_advice: str) -> str:
    """The API key as it is compared with the bearer token a client sends (which the service strips
    too): spaces and line ends around it dropped, since a secret file usually ends in a newline
    (``kubectl create secret --from-file``) that no client sends. A ValueError, whose message does
    not repeat the key, for one set but blank (a secret that failed to mount: ``blank_advice`` says
    what to do instead) or holding control characters (which no HTTP header can carry)."""
    key = value.strip()
    if not key:
        raise ValueError(f"set but empty: {blank_advice}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ValueError("holds control characters, which an HTTP header cannot carry")
    return key


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0 for all)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = pick a free one)")
    http_workers: int | Literal["auto"] = Field(
        "auto",
        description="HTTP front-end processes sharing the port, all feeding the one engine process "
        "(auto = one per CPU this process may use, by its affinity mask and any cgroup CPU limit, less one for "
        "the engine; at least 1); at most 4 per such CPU, or 8",
    )

    # Before onnx and engine: their defaults are read from it, and fields are validated in order.
    model_dir: Path = Field(
        DEFAULT_MODEL_DIR,
        description=f"folder of the model files: --onnx and --engine default to {ONNX_NAME} and {ENGINE_NAME} "
        "in it. The service makes nothing there and looks for no checkpoint; python -m service.entrypoint (the "
        "images', make serve) also takes alexnet.pt or alexnet-owt-*.pth there as --checkpoint and exports or "
        "builds what is missing",
    )
    onnx: Path = Field(
        default_factory=lambda data: _in_model_dir(data, ONNX_NAME),
        description=f"ONNX model (also the source of labels and preprocessing facts); default {ONNX_NAME} in "
        "--model-dir",
    )
    engine: Path = Field(
        default_factory=lambda data: _in_model_dir(data, ENGINE_NAME),
        description=f"TensorRT engine (with its .json sidecar); default {ENGINE_NAME} in --model-dir",
    )
    checkpoint: Path | None = Field(
        None,
        description="weights to serve: the torch backend loads them, TensorRT and ONNX Runtime refuse an ONNX "
        "that holds other weights; none = the ONNX file's weights (torch: its arch, untrained)",
    )
    arch: ArchName = Field(
        "torchvision",
        description="AlexNet layout where nothing records one: the torch backend's untrained model when "
        "there is no ONNX file, or a state dict without our metadata (torchvision's .pth)",
    )
    backend: BackendName = Field(
        "auto", description="auto picks tensorrt > onnxruntime > torch by what this host can run"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where inference runs")
    precision: Literal["auto", "fp32", "fp16"] = Field(
        "auto", description="auto = fp16 on CUDA, fp32 on CPU (where fp16 is refused)"
    )
    intra_op_threads: int = Field(0, ge=0, description="CPU inference threads (0 = one per CPU this process may use)")

    max_batch_size: int = Field(32, ge=1, le=4096, description="largest batch sent to the backend, images")
    max_delay_ms: float = Field(
        2.0,
        ge=0,
        description="longest a batch being formed waits for more images while another batch runs; only where "
        "batches overlap (GPU JPEG decoding prepares the next batch during the current one, or a backend runs "
        "several at once): on the CPU path it has no effect, and an idle backend never waits",
    )
    queue_capacity: int = Field(256, ge=1, description="images waiting for inference before new requests get 503")
    request_timeout_s: float = Field(10.0, gt=0, description="per-request deadline; past it the answer is 504")
    decode_threads: int = Field(
        0, ge=0, description="threads decoding images in each front end (0 = the CPUs divided among the front ends)"
    )
    decode: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="where JPEGs are decoded: gpu = nvJPEG in the engine (a backend on CUDA), cpu = in the "
        "front ends; auto = gpu where it can run with a decoder whose colour matches the CPU path's",
    )
    jpeg_draft: bool = Field(True, description="decode large JPEGs at reduced DCT size (>= 2x the resize target)")
    warmup: bool = Field(
        True,
        description="run every batch shape once before reporting ready; false = ready once loaded, the first "
        "batch of each shape pays the set-up (/v1/models: warmed_up false)",
    )

    max_body_bytes: int = Field(20 * 2**20, ge=1, description="largest request body, bytes (413 above)")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest decoded image, pixels (413 above)")
    decode_memory_mb: int = Field(
        2048,
        ge=64,
        description="memory that decoding large images and parsing large /v2 JSON bodies may take at once, MiB, "
        "across all front ends (a small file can decode to a large image: a 40-megapixel PNG with alpha takes "
        "~0.34 GB); work over it waits, work too large for it alone runs alone, images under 1/64 of it never wait",
    )
    max_images_per_request: int = Field(32, ge=1, description="images in one request (413 above)")
    max_top_k: int = Field(1000, ge=1, description="largest top_k a client may ask for")
    max_connections: int = Field(
        0,
        ge=0,
        description="concurrent connections per HTTP front end before its uvicorn answers 503 (the server takes "
        "up to this times --http-workers; 0 = no limit)",
    )

    api_key: SecretStr | None = Field(None, description="if set, requests need 'Authorization: Bearer <key>'")
    open_health: bool = Field(True, description="health and readiness endpoints need no API key")
    open_metrics: bool = Field(True, description="/metrics needs no API key")
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS ('' = CORS off)")

    model_name: str = Field("alexnet", description="name reported in responses and /v1/models")
    model_version: str = Field("1", description="version reported in responses and /v1/models")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.max_images_per_request > self.queue_capacity:
            raise ValueError(
                f"{setting_name('max_images_per_request')} ({self.max_images_per_request}) must not exceed "
                f"{setting_name('queue_capacity')} ({self.queue_capacity}): such a request could never be admitted"
            )
        return self

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        """ALEXNET_CHECKPOINT= (set but empty, as templates leave it) means none, not the directory '.'."""
        return None if value == "" else value

    @field_validator("api_key")
    @classmethod
    def _usable_key(cls, value: SecretStr | None) -> SecretStr | None:
        """Blank would require an empty bearer token, and serving without a key instead would open
        what was meant to be closed; a key no header can carry would answer every request 401."""
        if value is None:
            return None
        advice = f"give the key, or unset {API_KEY_ENV} to serve without one"
        return SecretStr(clean_api_key(value.get_secret_value(), advice))

    @field_validator("http_workers")
    @classmethod
    def _positive_workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1 (or auto)")
        if isinstance(value, int) and value > (limit := max(8, 4 * (cpus := usable_cpus()))):
            raise ValueError(
                f"must be at most {limit} (4 per CPU this process may use, {cpus} here; or 8): more front ends "
                "only contend for the CPUs, and each holds some 70 MB"
            )
        return value

    @property
    def cpu_threads(self) -> int:
        return self.intra_op_threads or usable_cpus()

    @property
    def frontends(self) -> int:
        """HTTP front-end processes: the setting, or for auto one per usable CPU less the engine's."""
        if isinstance(self.http_workers, int):
            return self.http_workers
        return max(1, usable_cpus() - 1)

    @property
    def decoder_threads(self) -> int:
        """Decode threads in each front end."""
        return self.decode_threads or max(1, usable_cpus() // self.frontends)

"""One settings object for the whole process, read from TESSERA_* environment variables.

`os.environ` is read here and nowhere else. A wrong value fails at start with a message naming the variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.assets import default_model_cache_dir
from core.errors import ConfigError

ENV_PREFIX = "TESSERA_"
_WEAK_SECRETS = {"secret", "changeme", "change-me", "changethis", "password", "tessera"}
MIN_SECRET_LENGTH = 32


class Settings(BaseSettings):
    """Everything Tessera can be configured with. Defaults give the embedded single-process mode."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Where the embedded engines keep their data: registry.db, qdrant/, blobs/.
    data_dir: Path = Path("data")

    # Authentication: HS256 with a shared secret, RS256 with a PEM public key, or both.
    jwt_secret: SecretStr | None = None
    jwt_public_key_file: Path | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway_seconds: int = Field(default=30, ge=0, le=600)

    # Ingestion queue: "embedded" runs a Celery worker thread in the API process with an in-memory
    # broker; "redis" sends tasks to separate `tessera worker` processes.
    queue: Literal["embedded", "redis"] = "embedded"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Documents one worker process ingests at once, on threads sharing one model: while the model embeds,
    # other threads parse, and the chunks of all of them are embedded together in shared batches.
    worker_concurrency: int = Field(default=4, ge=1, le=64)
    task_soft_time_limit_s: int = Field(default=600, ge=10)
    task_max_attempts: int = Field(default=3, ge=1, le=20)
    # How long Redis keeps a task unacknowledged before handing it to another worker (a worker that died).
    queue_visibility_timeout_s: int = Field(default=3600, ge=1)

    # Vector index: a Qdrant server when qdrant_url is set; otherwise an engine in the process under data_dir:
    # Qdrant Edge (HNSW and payload indexes), or qdrant-client's local mode (a Python brute force, for
    # comparison).
    embedded_engine: Literal["edge", "qdrant-local"] = "edge"
    qdrant_url: str | None = None
    qdrant_api_key: SecretStr | None = None
    collection: str = Field(default="tessera_chunks", pattern=r"^[A-Za-z0-9_\-]{1,128}$")
    # How a Qdrant server creates the collection (read once, when it does not exist yet): dense vectors on
    # disk (memory-mapped) instead of in RAM; int8 scalar quantization of the dense vectors (the quantized
    # copy stays in RAM, the originals rescore); shards and replicas for a cluster. Ignored by the embedded
    # engines.
    qdrant_on_disk: bool = False
    qdrant_quantization: Literal["none", "int8"] = "none"
    qdrant_shards: int = Field(default=1, ge=1, le=1024)
    qdrant_replicas: int = Field(default=1, ge=1, le=16)

    # Registry: any SQLAlchemy URL; SQLite under data_dir when unset.
    registry_url: str | None = None

    # Ingestion.
    max_upload_mb: int = Field(default=50, ge=1, le=10_000)
    chunk_tokens: int = Field(default=200, ge=32, le=2048)
    chunk_overlap_tokens: int = Field(default=20, ge=0, le=512)
    embed_batch_size: int = Field(default=32, ge=1, le=1024)
    # Parsing runs in a sandboxed child process (ingest/sandbox.py) with these limits; a document past one ends
    # `failed` with the reason. The memory cap is on the child's data segment, which starts near 750 MiB with
    # the parser loaded. Archive limits (ingest/archive.py says why these values): entries, what all entries
    # decompress to, and the compression ratio of any entry past 1 MiB (the shared documents' worst is 32).
    parse_memory_mb: int = Field(default=2048, ge=1024, le=65536)
    parse_timeout_s: int = Field(default=300, ge=1, le=3600)
    pdf_max_pages: int = Field(default=2000, ge=1, le=100_000)
    archive_max_entries: int = Field(default=10_000, ge=10)
    archive_max_uncompressed_mb: int = Field(default=512, ge=1)
    archive_max_ratio: int = Field(default=200, ge=10)
    # The embedding backend (core/embedding.py): "auto" is sentence-transformers in fp16 where CUDA is present,
    # else "onnx": an fp32 ONNX export of the same model, the same vectors faster on CPU (measured: one query
    # 3.0 ms against 15.5, passages 1.7x). "torch" forces sentence-transformers; "onnx-int8" is the
    # int8-quantized export (faster still, vectors slightly different).
    embed_backend: Literal["auto", "torch", "onnx", "onnx-int8"] = "auto"
    # Where the ONNX exports are kept (made offline from the bundled weights at install or first use and checked
    # by SHA-256); unset: the user's cache, shared by every data directory (core.assets.default_model_cache_dir).
    model_cache_dir: Path | None = None

    # Evaluation suites (evals/): where datasets and run records live, the nightly schedule (service mode,
    # Celery beat), and an optional OpenAI-compatible endpoint for the LLM-judged metrics.
    eval_datasets_dir: Path = Path("../shared/datasets")
    eval_results_dir: Path | None = None  # default: <data_dir>/evals
    eval_suites: str = "dbpedia,business-reports"
    eval_nightly_at: str = Field(default="02:30", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    eval_llm_base_url: str | None = None
    eval_llm_model: str | None = None
    eval_llm_api_key: SecretStr | None = None

    # Logs: "text" for a terminal, "json" (one object per line, with the request id) for a log pipeline.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Service mode: the port on which each `tessera worker` serves its Prometheus metrics (unset: none). The
    # API serves its own at /metrics; the embedded default has one process, so one endpoint.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)

    # The running server, for CLI commands that talk to it over HTTP.
    server_url: str = "http://127.0.0.1:8000"

    # Query. The search mode a query gets when it names none (see core.index.SearchMode). Dense, because on
    # dbpedia hybrid (0.455 nDCG@10) and sparse (0.335) score below it (0.486); see docs/performance.md.
    default_search_mode: Literal["dense", "sparse", "hybrid"] = "dense"
    default_top_k: int = Field(default=5, ge=1, le=50)
    max_top_k: int = Field(default=50, ge=1, le=50)
    default_max_context_tokens: int = Field(default=2000, ge=64, le=200_000)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.jwt_secret is None and self.jwt_public_key_file is None:
            raise ValueError(
                f"set {ENV_PREFIX}JWT_SECRET (HS256, at least {MIN_SECRET_LENGTH} characters) "
                f"or {ENV_PREFIX}JWT_PUBLIC_KEY_FILE (RS256): requests cannot be authenticated without one"
            )
        if self.jwt_secret is not None:
            secret = self.jwt_secret.get_secret_value()
            if len(secret) < MIN_SECRET_LENGTH or secret.lower() in _WEAK_SECRETS:
                raise ValueError(
                    f"{ENV_PREFIX}JWT_SECRET is too weak: use at least {MIN_SECRET_LENGTH} random characters"
                )
        if self.jwt_public_key_file is not None and not self.jwt_public_key_file.is_file():
            raise ValueError(f"{ENV_PREFIX}JWT_PUBLIC_KEY_FILE: no such file: {self.jwt_public_key_file}")
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(f"{ENV_PREFIX}CHUNK_OVERLAP_TOKENS must be smaller than {ENV_PREFIX}CHUNK_TOKENS")
        if self.default_top_k > self.max_top_k:
            raise ValueError(f"{ENV_PREFIX}DEFAULT_TOP_K must not exceed {ENV_PREFIX}MAX_TOP_K")
        return self

    @property
    def eval_results_path(self) -> Path:
        return self.eval_results_dir or self.data_dir / "evals"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def registry_database_url(self) -> str:
        return self.registry_url or f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def qdrant_path(self) -> Path:
        return self.data_dir / "qdrant"

    @property
    def edge_path(self) -> Path:
        return self.data_dir / "edge"

    @property
    def model_dir(self) -> Path:
        return self.model_cache_dir or default_model_cache_dir()

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def broker_url(self) -> str:
        return "memory://localhost/" if self.queue == "embedded" else self.redis_url


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides; raise ConfigError naming what is wrong."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
            problems.append(f"{name}: {error['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return load_settings()

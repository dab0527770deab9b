"""`tessera bench ingest|query|all`: the service benchmarks, printed as tables and saved as one JSON document.

- `ingest`: a fresh data directory, a `tessera serve` subprocess on it, dbpedia passages uploaded over HTTP and
  timed until final; then, with that server stopped, the encode-only reference on the same chunk texts.
- `query`: a `tessera serve` subprocess on a data directory an earlier `bench ingest` left (`--data-dir`), or on
  one seeded with N replicated dbpedia chunks (`--chunks N`, evals/bench/scale.py); then the load generator at
  each number of clients.
- `all`: `ingest`, then `query` on the same data directory, with the server started again: the second cold start
  is the one on a populated index.
- `load`: a fresh data directory and server, a seed batch uploaded by the owners of three tenants, then queries from
  many principals while a live batch is ingested, every answer checked against its principal's ACL
  (evals/bench/load.py).

This module is imported by `tessera`'s argument parser, so it imports nothing heavy at module level.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.settings import Settings
    from evals.bench.query import Reader

TENANT = "bench"
GROUPS = ("bench-g0", "bench-g1", "bench-g2", "bench-g3")
ALL_GROUP = "bench-all"
UPLOADER = "bench-uploader"
ADMIN = "bench-admin"
MANIFEST = "bench-manifest.json"
TOKEN_TTL_S = 12 * 3600
DEFAULT_RUNS_DIR = Path("data/bench")
_RESERVED_SETTINGS = {"data_dir", "jwt_secret"}


def _levels(value: str) -> list[int]:
    levels = [int(item) for item in value.split(",") if item.strip()]
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of client counts, each at least 1")
    return levels


def _at_least_one(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError("a whole number, at least 1")
    return int(value)


def _setting(value: str) -> tuple[str, str]:
    name, sep, setting = value.partition("=")
    name = name.strip().lower().removeprefix("tessera_")
    if not sep or not name:
        raise argparse.ArgumentTypeError("expected NAME=VALUE, e.g. embed_backend=onnx-int8")
    return name, setting


def add_bench_parser(subparsers: Any) -> None:
    """Register `bench ingest|query|all` on `tessera`'s subcommands (`subparsers` from add_subparsers)."""
    bench = subparsers.add_parser("bench", help="benchmarks: ingestion throughput, query latency, cold start, RSS")
    actions = bench.add_subparsers(dest="action", required=True)
    helps = {
        "ingest": "upload dbpedia to a fresh `tessera serve` and time it; the encode-only reference",
        "query": "query latency and throughput at 1, 4, 16 clients on an ingested or seeded data directory",
        "all": "ingest, then query the same data directory",
        "load": "queries from many principals while documents are ingested; every answer checked against its ACL",
    }
    for name, text in helps.items():
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("--dataset", type=Path, default=None, help="BEIR folder (default: <eval datasets>/dbpedia)")
        action.add_argument(
            "--data-dir", type=Path, default=None, help=f"default: a new folder under {DEFAULT_RUNS_DIR}"
        )
        action.add_argument(
            "--json", type=Path, default=None, help="where to save the result (default: in the data dir)"
        )
        action.add_argument(
            "--set",
            type=_setting,
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a setting for the server, e.g. embed_backend=onnx-int8 (repeatable; TESSERA_* variables also apply)",
        )
        if name in ("ingest", "all"):
            action.add_argument("--documents", type=int, default=None, help="the first N passages (default: all)")
            action.add_argument("--upload-concurrency", type=int, default=4, help="client threads uploading")
            action.add_argument(
                "--passages-per-document",
                type=_at_least_one,
                default=1,
                help="consecutive passages joined into one uploaded document (default 1: each passage its own)",
            )
            action.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for ingestion")
            action.add_argument(
                "--encode-min-s", type=float, default=10.0, help="encode-only: repeat passes for at least this long"
            )
        if name in ("query", "all"):
            action.add_argument("--clients", type=_levels, default=[1, 4, 16], help="client counts (default 1,4,16)")
            action.add_argument("--requests", type=int, default=1000, help="at most this many requests per level")
            action.add_argument("--duration", type=float, default=60.0, help="at most this many seconds per level")
            action.add_argument("--warmup", type=int, default=2, help="untimed requests per client before each level")
            action.add_argument(
                "--warmup-s", type=float, default=10.0, help="seconds of untimed load before the first level"
            )
            action.add_argument("--mode", choices=["dense", "sparse", "hybrid"], default=None)
            action.add_argument("--top-k", type=int, default=None)
        if name == "query":
            action.add_argument(
                "--chunks", type=int, default=None, help="seed N replicated dbpedia chunks (evals/bench/scale.py)"
            )
        if name == "load":
            _add_load_arguments(action)
        action.set_defaults(func=run_load_bench if name == "load" else run_bench)


def _add_load_arguments(action: Any) -> None:
    action.add_argument("--principals", type=int, default=40, help="principals querying (at least 8)")
    action.add_argument("--seed-documents", type=int, default=150, help="documents ingested before the load")
    action.add_argument("--live-documents", type=int, default=60, help="documents uploaded during the load")
    action.add_argument("--clients", type=int, default=16, help="concurrent query clients")
    action.add_argument("--requests", type=int, default=5000, help="at most this many measured requests")
    action.add_argument(
        "--min-requests", type=int, default=1000, help="requests before the load may end on the live batch being final"
    )
    action.add_argument("--duration", type=float, default=300.0, help="at most this many seconds of load")
    action.add_argument("--warmup", type=int, default=2, help="untimed (but checked) requests per client")
    action.add_argument("--top-k", type=int, default=50, help="results asked per query (the server allows 50)")
    action.add_argument("--upload-interval", type=float, default=0.1, help="seconds between live uploads")
    action.add_argument("--upload-concurrency", type=int, default=4, help="client threads uploading the seed")
    action.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for each batch's ingestion")
    action.add_argument("--rng-seed", type=int, default=7, help="the scenario's seed (principals, ACLs, passages)")


_clock = {"started": time.monotonic()}  # reset when a benchmark starts


def _log(message: str) -> None:
    print(f"[bench {time.monotonic() - _clock['started']:7.1f}s] {message}", file=sys.stderr, flush=True)


class _Session:
    """One benchmark invocation: its settings, secret, data directory and token minting."""

    def __init__(self, args: argparse.Namespace) -> None:
        from core.errors import ConfigError
        from core.settings import Settings, load_settings

        self.overrides: dict[str, str] = dict(args.set)
        unknown = sorted(n for n in self.overrides if n not in Settings.model_fields or n in _RESERVED_SETTINGS)
        if unknown:
            raise ConfigError(f"--set: not a setting the benchmark may change: {', '.join(unknown)}")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.data_dir: Path = (args.data_dir or DEFAULT_RUNS_DIR / f"{args.action}-{stamp}").resolve()
        self.secret = secrets.token_urlsafe(48)
        self.settings: Settings = load_settings(data_dir=self.data_dir, jwt_secret=self.secret, **self.overrides)
        self.env = {
            "TESSERA_DATA_DIR": str(self.data_dir),
            "TESSERA_JWT_SECRET": self.secret,
            **{f"TESSERA_{name.upper()}": value for name, value in self.overrides.items()},
        }
        self.dataset: Path = args.dataset or self.settings.eval_datasets_dir / "dbpedia"

    def token(self, tenant: str, subject: str, groups: tuple[str, ...], *, admin: bool = False) -> str:
        from api.auth import mint_token

        return mint_token(
            self.secret,
            subject=subject,
            tenant=tenant,
            groups=groups,
            admin=admin,
            ttl_seconds=TOKEN_TTL_S,
            audience=self.settings.jwt_audience,
            issuer=self.settings.jwt_issuer,
        )

    def reader_token(self, reader: Reader) -> str:
        return self.token(reader.tenant, reader.subject, reader.groups)

    def server(self, readers: list[Reader], run: str) -> Any:
        from evals.bench.server import BenchServer

        log_path = self.data_dir / "bench-logs" / f"server-{run}.log"
        return BenchServer(self.settings, self.env, self.reader_token(readers[0]), log_path)


def ingest_readers() -> list[Reader]:
    """Principals for a data directory the ingest benchmark filled: document i is shared with group
    GROUPS[i % 4] and with ALL_GROUP, so these readers admit a quarter, half and all of the documents."""
    from evals.bench.query import Reader

    return [
        Reader(TENANT, "reader-quarter", (GROUPS[0],), "25%"),
        Reader(TENANT, "reader-half", (GROUPS[1], GROUPS[2]), "50%"),
        Reader(TENANT, "reader-all", (ALL_GROUP,), "100%"),
    ]


def _write_manifest(data_dir: Path, source: str, readers: list[Reader], **figures: Any) -> None:
    manifest = {"source": source, "readers": [r.as_dict() for r in readers], **figures}
    (data_dir / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _read_manifest(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / MANIFEST
    if not path.is_file():
        return None
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return manifest


def _ingest_phase(session: _Session, args: argparse.Namespace, result: dict[str, Any]) -> list[Reader]:
    from core.errors import ConfigError
    from evals.bench.ingest import (
        bench_documents,
        chunk_texts_by_pipeline,
        chunk_texts_from_edge,
        encode_only,
        run_ingest,
    )
    from evals.datasets import load_beir

    if session.data_dir.exists() and any(session.data_dir.iterdir()):
        raise ConfigError(f"the ingest benchmark needs a new or empty data directory: {session.data_dir} is not")
    session.data_dir.mkdir(parents=True, exist_ok=True)
    passages = list(load_beir(session.dataset).passages.values())[: args.documents]
    documents = bench_documents(
        passages, [(group, ALL_GROUP) for group in GROUPS], passages_per_document=args.passages_per_document
    )
    readers = ingest_readers()
    _log(
        f"ingest: {len(passages)} passages as {len(documents)} documents from {session.dataset} into {session.data_dir}"
    )
    with session.server(readers, "ingest") as server:
        _log(f"server up: cold start {server.cold_start_s:.2f}s; uploading")
        figures, order = run_ingest(
            server.base_url,
            documents,
            uploader_token=session.token(TENANT, UPLOADER, (ALL_GROUP,)),
            admin_token=session.token(TENANT, ADMIN, (), admin=True),
            upload_concurrency=args.upload_concurrency,
            timeout_s=args.timeout,
        )
    result["servers"]["ingest"] = server.stats.as_dict() if server.stats else None
    result["ingest"] = figures
    _write_manifest(session.data_dir, "ingest", readers, documents=len(documents), chunks=figures["chunks"])
    settings = session.settings
    on_edge = settings.qdrant_url is None and settings.embedded_engine == "edge"
    _log(f"ingested {figures['chunks']} chunks in {figures['wall_s']:.1f}s; encode-only reference")
    texts = chunk_texts_from_edge(settings, order) if on_edge else chunk_texts_by_pipeline(settings, documents)
    reference = encode_only(settings, texts, min_seconds=args.encode_min_s)
    reference["texts_from"] = "the Edge index's stored chunks" if on_edge else "the pipeline's parser and chunker"
    result["encode_reference"] = reference
    if reference["texts"] != figures["chunks"]:
        result["notes"].append(f"encode-only texts ({reference['texts']}) != ingested chunks ({figures['chunks']})")
    ingest_rate, encode_rate = figures["chunks_per_s"], reference["texts_per_s"]
    result["ingest_vs_encode"] = round(ingest_rate / encode_rate, 4) if encode_rate else None
    return readers


def _seeded_readers(session: _Session, chunks: int) -> list[Reader]:
    """Readers of a data directory seeded with `chunks` replicated chunks (reused when its manifest matches)."""
    from core.errors import ConfigError
    from evals.bench import scale
    from evals.bench.query import Reader

    manifest = _read_manifest(session.data_dir)
    if manifest is not None and manifest.get("source") == "seeded" and manifest.get("chunks") == chunks:
        _log(f"reusing the {chunks}-chunk index seeded earlier in {session.data_dir}")
        return [Reader.from_dict(r) for r in manifest["readers"]]
    if (session.data_dir / "edge").exists():
        raise ConfigError(f"{session.data_dir} already holds an index; give a new data directory to seed")
    session.data_dir.mkdir(parents=True, exist_ok=True)
    _log(f"seeding {chunks} replicated chunks into {session.data_dir / 'edge'}")
    seeded = scale.seed_query_data_dir(session.data_dir, chunks, scale.TENANT, datasets_dir=session.dataset.parent)
    readers = [Reader(r.tenant, r.subject, r.groups, label, r.admitted) for label, r in seeded.items()]
    _write_manifest(session.data_dir, "seeded", readers, chunks=chunks)
    return readers


def _query_readers(session: _Session, args: argparse.Namespace) -> list[Reader]:
    from core.errors import ConfigError
    from evals.bench.query import Reader

    if args.chunks is not None:
        return _seeded_readers(session, args.chunks)
    manifest = _read_manifest(session.data_dir)
    if args.data_dir is None or manifest is None:
        raise ConfigError("bench query needs --data-dir of an earlier `bench ingest`, or --chunks N to seed one")
    return [Reader.from_dict(r) for r in manifest["readers"]]


def _query_phase(session: _Session, args: argparse.Namespace, readers: list[Reader], result: dict[str, Any]) -> None:
    from evals.bench.query import load_queries, run_query_bench, warm_up

    queries = load_queries(session.dataset)
    _log(f"query: clients {args.clients}, at most {args.requests} requests / {args.duration:g}s each")
    with session.server(readers, "query") as server:
        tokens = [session.reader_token(r) for r in readers]
        _log(f"server up: cold start {server.cold_start_s:.2f}s; warming up for {args.warmup_s:g}s")
        warmed = warm_up(
            server.base_url,
            tokens,
            queries,
            seconds=args.warmup_s,
            clients=min(4, max(args.clients)),
            top_k=args.top_k,
            mode=args.mode,
        )
        levels = run_query_bench(
            server.base_url,
            tokens,
            queries,
            levels=args.clients,
            requests=args.requests,
            duration_s=args.duration,
            warmup=args.warmup,
            top_k=args.top_k,
            mode=args.mode,
        )
    result["servers"]["query"] = server.stats.as_dict() if server.stats else None
    result["query"] = {
        "mode": args.mode,
        "top_k": args.top_k,
        "queries": len(queries),
        "readers": [r.as_dict() for r in readers],
        "requests_bound": args.requests,
        "duration_bound_s": args.duration,
        "warmup_per_client": args.warmup,
        "warmup": warmed,
        "levels": levels,
    }


def run_bench(args: argparse.Namespace) -> int:
    """Run `tessera bench <action>`; print the tables, save the JSON. Exit 1 when a query or a document failed."""
    from core import offline
    from evals.bench.machine import machine_record, settings_record
    from evals.bench.report import format_report, write_json

    offline.enforce()
    _clock["started"] = time.monotonic()
    session = _Session(args)
    result: dict[str, Any] = {
        "kind": args.action,
        "machine": machine_record(),
        "settings": settings_record(session.settings, session.overrides),
        "dataset": str(session.dataset),
        "data_dir": str(session.data_dir),
        "servers": {},
        "notes": [],
    }
    if session.settings.queue == "embedded":
        result["notes"].append("embedded default: the API and the ingestion worker are one process (one peak RSS)")
    readers = _ingest_phase(session, args, result) if args.action in ("ingest", "all") else None
    if args.action in ("query", "all"):
        _query_phase(session, args, readers or _query_readers(session, args), result)
    result["machine_after"] = {"load_average": machine_record()["load_average"]}
    path = write_json(result, args.json or session.data_dir / f"bench-{args.action}.json")
    print(format_report(result))
    print(f"\nsaved {path}")
    query = result.get("query", {})
    failed = sum(level["failures"] for level in [*query.get("levels", []), *([query["warmup"]] if query else [])])
    ingest = result.get("ingest", {})
    failed += ingest.get("failed", 0) + ingest.get("refused", 0)
    return 1 if failed else 0


def run_load_bench(args: argparse.Namespace) -> int:
    """Run `tessera bench load`; print the tables, save the JSON (and the raw answers beside it). Exit 1 when a
    request failed, a document was refused or failed, or any answer leaked or lost a document."""
    from core import offline
    from core.errors import ConfigError
    from evals.bench.load import LoadBounds, build_scenario, format_load, run_load_test, save_records, server_table
    from evals.bench.machine import machine_record, settings_record
    from evals.bench.query import Reader, load_queries
    from evals.bench.report import format_report, write_json
    from evals.datasets import load_beir

    offline.enforce()
    _clock["started"] = time.monotonic()
    session = _Session(args)
    if session.data_dir.exists() and any(session.data_dir.iterdir()):
        raise ConfigError(f"the load benchmark needs a new or empty data directory: {session.data_dir} is not")
    session.data_dir.mkdir(parents=True, exist_ok=True)
    scenario = build_scenario(
        list(load_beir(session.dataset).passages.values()),
        principals=args.principals,
        seed_documents=args.seed_documents,
        live_documents=args.live_documents,
        rng_seed=args.rng_seed,
    )
    bounds = LoadBounds(
        clients=args.clients,
        requests=args.requests,
        duration_s=args.duration,
        warmup=args.warmup,
        top_k=args.top_k,
        upload_concurrency=args.upload_concurrency,
        upload_interval_s=args.upload_interval,
        ingest_timeout_s=args.timeout,
        min_requests=args.min_requests,
    )
    result: dict[str, Any] = {
        "kind": "load",
        "machine": machine_record(),
        "settings": settings_record(session.settings, session.overrides),
        "dataset": str(session.dataset),
        "data_dir": str(session.data_dir),
        "rng_seed": args.rng_seed,
        "servers": {},
        "notes": [],
    }
    if session.settings.queue == "embedded":
        result["notes"].append("embedded default: the API and the ingestion worker are one process (one peak RSS)")
    first = scenario.principals[0]
    _log(
        f"load: {len(scenario.principals)} principals, {len(scenario.seed)} seed and {len(scenario.live)} live "
        f"documents, {bounds.clients} clients, at most {bounds.requests} requests / {bounds.duration_s:g}s"
    )
    with session.server([Reader(first.tenant, first.subject, first.groups, first.label)], "load") as server:
        _log(f"server up: cold start {server.cold_start_s:.2f}s; seeding, then the load")
        figures, records = run_load_test(
            server.base_url, scenario, load_queries(session.dataset), session.token, bounds
        )
    result["servers"]["load"] = server.stats.as_dict() if server.stats else None
    result.update(figures)
    result["responses_file"] = str(save_records(records, session.data_dir / "load-responses.jsonl"))
    result["machine_after"] = {"load_average": machine_record()["load_average"]}
    path = write_json(result, args.json or session.data_dir / "bench-load.json")
    print(format_report({key: result[key] for key in ("kind", "machine", "settings")}))
    print()
    print(format_load(result))
    print()
    print(server_table(result["servers"]["load"]))
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"\nsaved {path}")
    load, seed, live = result["load"], result["seed"], result["live"]
    bad = load["failures"] + load["leaks"] + load["losses"] + load["bad_records"]
    bad += seed["refused"] + seed["failed"] + live["refused"] + live["failed"]
    return 1 if bad else 0

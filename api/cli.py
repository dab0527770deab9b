"""`tessera`: serve, worker, ingest, query, token, demo, bench.

`ingest` and `query` talk to a running server over HTTP (the embedded engines hold their data directory for
one process), with a token minted from the configured HS256 secret for the user named on the command line.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from api.auth import mint_token
from api.client import ClientError, TesseraClient
from core.errors import ConfigError, TesseraError
from core.logs import configure_logging
from core.settings import Settings, get_settings, load_settings

DEFAULT_TENANT = "default"


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _secret(settings: Settings) -> str:
    if settings.jwt_secret is None:
        raise ConfigError("this command mints HS256 tokens: set TESSERA_JWT_SECRET")
    return settings.jwt_secret.get_secret_value()


def _identity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", required=True, help="the subject (sub claim) to act as")
    parser.add_argument("--groups", type=_csv, default=[], help="comma-separated groups of that user")
    parser.add_argument("--tenant", default=DEFAULT_TENANT, help=f"tenant (default {DEFAULT_TENANT!r})")


def _expand(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"no such file or directory: {raw}")
    return files


def _service_settings(args: argparse.Namespace) -> Settings:
    """Settings for a long-running process, with its logging configured (--log-level over the setting)."""
    settings = get_settings()
    configure_logging(settings.log_format, (args.log_level or settings.log_level).upper())
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn  # imported here: keeps `tessera token` instant

    from api.app import create_app

    settings = _service_settings(args)
    # Tessera's own middleware logs each request with its id (api/observability.py): no uvicorn access log,
    # and no uvicorn logging config replacing the one just made.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=None, access_log=False)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from api.worker import run_worker  # the model stack, only for this command

    settings = _service_settings(args)
    return run_worker(
        settings,
        concurrency=args.concurrency,
        loglevel=(args.log_level or settings.log_level).upper(),
        pool=args.pool,
        embedded_index=args.embedded_index,
    )


def cmd_migrate(args: argparse.Namespace) -> int:
    from core.db import Database
    from core.schema import migrate

    settings = _service_settings(args)
    database = Database(settings.registry_database_url)
    try:
        revision = migrate(database)
    finally:
        database.close()
    print(f"the registry schema is at revision {revision}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    settings = get_settings()
    print(
        mint_token(
            _secret(settings),
            subject=args.user,
            tenant=args.tenant,
            groups=args.groups,
            ttl_seconds=args.ttl,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    )
    return 0


def _client(args: argparse.Namespace, *, admin: bool = False) -> TesseraClient:
    settings = get_settings()
    token = mint_token(
        _secret(settings),
        subject=args.user,
        tenant=args.tenant,
        groups=getattr(args, "groups", []),
        admin=admin,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    return TesseraClient(args.url or settings.server_url, token)


def cmd_apikey(args: argparse.Namespace) -> int:
    with _client(args, admin=True) as client:
        if args.action == "create":
            created = client.create_api_key(args.name, args.key_groups)
            print(f"created API key {created['id']} for {created['subject']} in tenant {args.tenant}")
            print(f"groups: {', '.join(created['groups']) or '(none)'}")
            print(f"key (shown once, store it now): {created['key']}")
        elif args.action == "list":
            for key in client.list_api_keys():
                state = f"revoked {key['revoked_at']}" if key["revoked_at"] else "active"
                print(f"{key['id']}  {key['name']:<24} {','.join(key['groups']):<24} {state}")
        else:
            revoked = client.revoke_api_key(args.key_id)
            print(f"revoked {revoked['id']} ({revoked['name']})")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    with _client(args, admin=True) as client:
        records = client.audit(subject=args.subject, since=args.since, until=args.until, limit=args.limit)
    for record in records:
        target = record["target"] or "-"
        print(
            f"{record['at']}  {record['subject']:<20} {record['action']:<18} {record['outcome']:<10} {target}  "
            f"{record['detail'] or ''}"
        )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    with _client(args, admin=True) as client:
        report = client.check(repair=args.repair)
    for finding in report["findings"]:
        print(f"{finding['document_id']}  {finding['problem']}  ->  {finding['repair']}")
    state = "consistent" if report["consistent"] else ("repaired" if report["repaired"] else "INCONSISTENT")
    print(f"{state}: {report['documents']} documents, {report['chunks']} chunks, {len(report['findings'])} findings")
    return 0 if report["consistent"] or report["repaired"] else 1


def cmd_ingest(args: argparse.Namespace) -> int:
    files = _expand(args.paths)
    with _client(args) as client:
        accepted: dict[str, str] = {}
        refused = 0
        for path in tqdm(files, desc="upload", unit="file"):
            try:
                accepted[client.upload(path, users=args.share_users, groups=args.share_groups)["id"]] = path.name
            except ClientError as exc:
                refused += 1
                tqdm.write(f"refused  {path}: {exc}")
        if args.no_wait:
            for document_id, name in accepted.items():
                print(f"queued   {name}  {document_id}")
            return 1 if refused else 0
        failed = 0
        with tqdm(total=len(accepted), desc="ingest", unit="doc") as bar:

            def report(record: dict[str, object]) -> None:
                nonlocal failed
                bar.update(1)
                if record["status"] == "failed":
                    failed += 1
                    tqdm.write(f"failed   {record['file_name']}: {record['failure_reason']}")
                else:
                    tqdm.write(f"ready    {record['file_name']}: {record['chunk_count']} chunks  {record['id']}")

            client.wait(list(accepted), on_final=report)
    print(f"{len(accepted) - failed} ready, {failed} failed, {refused} refused")
    return 1 if failed or refused else 0


def cmd_query(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.query(args.text, top_k=args.top_k, max_context_tokens=args.max_context_tokens, mode=args.mode)
    if not answer["results"]:
        print("no results: nothing this user may read matches")
    for rank, hit in enumerate(answer["results"], 1):
        where = ", ".join(
            part
            for part in (hit["file_name"], hit["page"] and f"page {hit['page']}", hit["section"] and hit["section"])
            if part
        )
        snippet = " ".join(hit["text"].split())[:160]
        print(f"{rank:>2}. {hit['score']:.3f}  {where}\n    {snippet}")
    if args.show_prompt:
        print(f"\n--- prompt ({answer['prompt_tokens']} tokens) ---\n{answer['prompt']}")
    return 0


def _eval_settings() -> Settings:
    """Eval runs serve nothing over HTTP: without a configured JWT secret, an ephemeral one will do."""
    try:
        return get_settings()
    except ConfigError:
        return load_settings(jwt_secret=secrets.token_urlsafe(48))  # still fails on any other bad setting


def cmd_eval_run(args: argparse.Namespace) -> int:
    from api.evaluation import run_evaluation  # the model stack, only for this command
    from core.index import SearchMode
    from evals.suite import SuiteOptions

    bars: dict[str, tqdm[None]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.setdefault(stage, tqdm(total=total, desc=stage, unit="doc" if stage == "ingest" else "query"))
        bar.update(done - bar.n)

    options = SuiteOptions(
        acl_groups=1 if args.no_acl else args.groups,
        acl_users=args.users,
        seed=args.seed,
        top_k=args.top_k,
        modes=tuple(SearchMode(mode) for mode in args.modes),
    )
    saved = run_evaluation(
        _eval_settings(),
        args.suite,
        options,
        max_queries=args.max_queries,
        extra_passages=args.extra_passages,
        progress=progress,
    )
    for bar in bars.values():
        bar.close()
    leaks = 0
    for record, path in saved:
        _print_run(record)
        print(f"saved {path}")
        leaks += record["leaks"]
    if leaks:
        print(f"LEAKS: {leaks} results outside their reader's ACL", file=sys.stderr)
        return 1
    return 0


def _print_run(record: dict[str, Any]) -> None:
    print(f"run {record['run_id']} ({record['mode']}): {record['index_size']}")
    print("  " + "  ".join(f"{name} {value:.4f}" for name, value in record["metrics"].items() if value is not None))
    for user, figures in record["per_user"].items():
        fidelity = "-" if figures["fidelity@10"] is None else f"{figures['fidelity@10']:.4f}"
        print(
            f"  {user:<4} groups {','.join(figures['groups']):<24} ndcg@10 {figures['ndcg@10'] or 0:.4f} "
            f"recall@10 {figures['recall@10'] or 0:.4f} fidelity@10 {fidelity} leaks {figures['leaks']}"
        )
    latency = record["latency_ms"]
    print("  latency ms " + "  ".join(f"{part} p50 {v['p50']:.1f} p95 {v['p95']:.1f}" for part, v in latency.items()))
    print(f"  llm-judged: {record['llm_metrics']}")


def cmd_eval_report(args: argparse.Namespace) -> int:
    from api.evaluation import report

    path, gate = report(
        _eval_settings(),
        args.suite,
        baseline_id=args.baseline,
        out=Path(args.out) if args.out else None,
        mode=args.mode,
    )
    print(f"report: {path}")
    for failure in gate.failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 0 if gate.passed else 1


def cmd_beat(args: argparse.Namespace) -> int:
    from api.worker import run_beat

    settings = _service_settings(args)
    return run_beat(settings, loglevel=(args.log_level or settings.log_level).upper())


def cmd_demo(args: argparse.Namespace) -> int:
    from api.demo import run_demo  # the whole server stack, only for this command

    return run_demo(Path(args.docs))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API (embedded default: with an in-process ingestion worker)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default=None, help="default TESSERA_LOG_LEVEL")
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run Celery ingestion workers on Redis (service mode)")
    worker.add_argument("--concurrency", type=int, default=None)
    worker.add_argument("--log-level", default=None, help="default TESSERA_LOG_LEVEL")
    worker.add_argument(
        "--pool",
        default="threads",
        choices=["threads", "solo", "prefork"],
        help="threads (default): one model per process, documents embedded together; prefork: a model per child",
    )
    worker.add_argument(
        "--embedded-index",
        action="store_true",
        help="hold the embedded index under TESSERA_DATA_DIR (one solo worker, no API on that directory)",
    )
    worker.set_defaults(func=cmd_worker)

    ingest = sub.add_parser("ingest", help="upload files to a running server and wait for them")
    ingest.add_argument("paths", nargs="+", help="files or directories")
    _identity(ingest)
    ingest.add_argument("--share-users", type=_csv, default=[], help="users who may read (besides you)")
    ingest.add_argument("--share-groups", type=_csv, default=[], help="groups who may read")
    ingest.add_argument("--no-wait", action="store_true", help="return once uploaded")
    ingest.add_argument("--url", default=None, help="server URL (default TESSERA_SERVER_URL)")
    ingest.set_defaults(func=cmd_ingest)

    query = sub.add_parser("query", help="ask a running server, as a user")
    query.add_argument("text")
    _identity(query)
    query.add_argument("--top-k", type=int, default=None)
    query.add_argument("--max-context-tokens", type=int, default=None)
    query.add_argument(
        "--mode", choices=["dense", "sparse", "hybrid"], default=None, help="default: TESSERA_DEFAULT_SEARCH_MODE"
    )
    query.add_argument("--show-prompt", action="store_true")
    query.add_argument("--url", default=None, help="server URL (default TESSERA_SERVER_URL)")
    query.set_defaults(func=cmd_query)

    token = sub.add_parser("token", help="mint an HS256 token for the configured secret")
    _identity(token)
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.set_defaults(func=cmd_token)

    apikey = sub.add_parser("apikey", help="service-account API keys of a tenant (over HTTP, as its admin)")
    apikey_sub = apikey.add_subparsers(dest="action", required=True)
    for name, helptext in (("create", "issue a key"), ("list", "list keys"), ("revoke", "revoke a key")):
        action = apikey_sub.add_parser(name, help=helptext)
        action.add_argument("--tenant", required=True)
        action.add_argument("--user", default="tessera-cli", help="the admin subject to act as")
        action.add_argument("--url", default=None, help="server URL (default TESSERA_SERVER_URL)")
        if name == "create":
            action.add_argument("--name", required=True)
            action.add_argument("--groups", dest="key_groups", type=_csv, default=[], help="the key's groups")
        if name == "revoke":
            action.add_argument("key_id")
        action.set_defaults(func=cmd_apikey)

    audit = sub.add_parser("audit", help="print a tenant's audit log (over HTTP, as its admin)")
    audit.add_argument("--tenant", required=True)
    audit.add_argument("--user", default="tessera-cli", help="the admin subject to act as")
    audit.add_argument("--subject", default=None)
    audit.add_argument("--since", default=None, help="ISO time, inclusive")
    audit.add_argument("--until", default=None, help="ISO time, exclusive")
    audit.add_argument("--limit", type=int, default=100)
    audit.add_argument("--url", default=None, help="server URL (default TESSERA_SERVER_URL)")
    audit.set_defaults(func=cmd_audit)

    check = sub.add_parser("check", help="do the registry and the index agree on a tenant's documents? (as its admin)")
    check.add_argument("--tenant", required=True)
    check.add_argument("--user", default="tessera-cli", help="the admin subject to act as")
    check.add_argument("--repair", action="store_true", help="make the index agree with the registry")
    check.add_argument("--url", default=None, help="server URL (default TESSERA_SERVER_URL)")
    check.set_defaults(func=cmd_check)

    evaluation = sub.add_parser("eval", help="evaluation suites: relevance, retrieval time, leaks")
    eval_sub = evaluation.add_subparsers(dest="action", required=True)
    run = eval_sub.add_parser("run", help="run a suite on a fresh embedded Tessera and keep its results")
    run.add_argument("suite", help="a dataset name under TESSERA_EVAL_DATASETS_DIR, or a path in BEIR layout")
    run.add_argument("--no-acl", action="store_true", help="one group: every user sees every passage")
    run.add_argument("--groups", type=int, default=8, help="groups the passages are spread over (default 8)")
    run.add_argument("--users", type=int, default=4, help="restricted users besides `all` (default 4)")
    run.add_argument("--seed", type=int, default=13)
    run.add_argument("--top-k", type=int, default=50)
    run.add_argument("--max-queries", type=int, default=None, help="a slice: this many queries...")
    run.add_argument("--extra-passages", type=int, default=None, help="...their passages and this many others")
    run.add_argument(
        "--modes",
        nargs="+",
        choices=["dense", "sparse", "hybrid"],
        default=["dense", "sparse", "hybrid"],
        help="search modes to query in, one run record each, over one ingestion (default: all three)",
    )
    run.set_defaults(func=cmd_eval_run)
    rep = eval_sub.add_parser("report", help="write the HTML report; exit 1 if the latest run fails the gate")
    rep.add_argument("--suite", default=None, help="default: the suite of the latest run")
    rep.add_argument("--baseline", default=None, help="a run id to compare against")
    rep.add_argument("--mode", default=None, help="the runs of this search mode (default TESSERA_DEFAULT_SEARCH_MODE)")
    rep.add_argument("--out", default=None, help="default: <results dir>/report-<suite>-<mode>.html")
    rep.set_defaults(func=cmd_eval_report)

    beat = sub.add_parser("beat", help="Celery beat: schedules the nightly eval runs (service mode)")
    beat.add_argument("--log-level", default=None, help="default TESSERA_LOG_LEVEL")
    beat.set_defaults(func=cmd_beat)

    migrate = sub.add_parser("migrate", help="bring the registry's SQL schema to the newest revision, then exit")
    migrate.add_argument("--log-level", default=None, help="default TESSERA_LOG_LEVEL")
    migrate.set_defaults(func=cmd_migrate)

    demo = sub.add_parser("demo", help="start a server, upload as two users, query as each")
    demo.add_argument("--docs", default="../shared/docs", help="the documents to upload (default ../shared/docs)")
    demo.set_defaults(func=cmd_demo)

    from evals.bench.cli import add_bench_parser  # light: the benchmarks import their stack when they run

    add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (TesseraError, ClientError) as exc:
        print(f"tessera: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())

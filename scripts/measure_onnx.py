"""Measure an ONNX embedding backend (--precision int8 or fp32) against the sentence-transformers model in fp32
("torch"), in one run:

(a) encode throughput on the same texts (the first N DBpedia passages, title + "\\n\\n" + text), both backends'
    runs interleaved, medians over the repeats;
(b) nDCG@10 on both shared BEIR datasets with each backend, by exact brute-force cosine over all passages (no ACL),
    with the standard error of the paired per-query difference (the sets have few judged queries) and fidelity@10,
    the share of the torch top 10 that ONNX also returns.

Prints a table and writes JSON to --json.

    .venv/bin/python scripts/measure_onnx.py --json data/measure-onnx.json [--precision int8] [--texts 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

import core.offline
from core.assets import embedding_model_dir
from core.onnx_encoder import OnnxEncoder, export_onnx, manifest_file
from evals.datasets import BeirDataset, load_beir
from evals.metrics import fidelity_at_k, mean_of, ndcg_at_k

Encode = Callable[[Sequence[str]], np.ndarray]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _timed(encode: Encode, texts: Sequence[str]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one encode over `texts`."""
    wall, cpu = time.perf_counter(), time.process_time()
    encode(texts)
    return time.perf_counter() - wall, time.process_time() - cpu


@dataclass
class Throughput:
    texts_per_s: float  # median over the repeats, wall clock
    texts_per_cpu_s: float  # median over the repeats, process CPU time (all threads)
    runs_wall_s: list[float]
    runs_cpu_s: list[float]


@dataclass
class Relevance:
    passages: int
    queries: int
    ndcg10_torch: float
    ndcg10_onnx: float
    relative_diff: float  # (onnx - torch) / torch
    relative_diff_se: float  # standard error of relative_diff from the paired per-query differences
    fidelity10: float  # mean share of the torch top 10 that ONNX also returns in its top 10
    passage_cosine_min: float  # between the torch and ONNX vectors of the same passage
    passage_cosine_mean: float


def _throughput(backends: dict[str, Encode], texts: Sequence[str], repeats: int) -> dict[str, Throughput]:
    for encode in backends.values():
        encode(texts[:64])  # warm up
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in backends}
    names = list(backends)
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:  # alternate who goes first
            runs[name].append(_timed(backends[name], texts))
            print(f"  repeat {repeat + 1}/{repeats} {name}: {len(texts) / runs[name][-1][0]:.1f} texts/s", flush=True)
    return {
        name: Throughput(
            texts_per_s=len(texts) / statistics.median(wall for wall, _ in timings),
            texts_per_cpu_s=len(texts) / statistics.median(cpu for _, cpu in timings),
            runs_wall_s=[round(wall, 3) for wall, _ in timings],
            runs_cpu_s=[round(cpu, 3) for _, cpu in timings],
        )
        for name, timings in runs.items()
    }


@dataclass
class Ranking:
    passage_ids: list[str]
    passages: np.ndarray  # passage vectors
    top10: list[list[str]]  # per query, best first
    ndcg10: list[float]  # per query


def _rank(dataset: BeirDataset, encode: Encode) -> Ranking:
    """Exact brute-force cosine of every query against all passages (the vectors are unit length)."""
    passage_ids = list(dataset.passages)
    passages = encode([dataset.passages[pid].document_text for pid in passage_ids])
    query_ids = list(dataset.queries)
    scores = encode([dataset.queries[qid] for qid in query_ids]) @ passages.T
    top10: list[list[str]] = []
    ndcg10: list[float] = []
    for row, qid in enumerate(query_ids):
        top10.append([passage_ids[i] for i in np.argsort(-scores[row], kind="stable")[:10]])
        value = ndcg_at_k(top10[-1], dataset.qrels[qid], k=10)
        if value is None:  # load_beir keeps only queries with a relevant passage
            raise RuntimeError(f"{dataset.name}: query {qid} has no relevant passage")
        ndcg10.append(value)
    return Ranking(passage_ids, passages, top10, ndcg10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--texts", type=int, default=2000, help="DBpedia passages for the throughput test")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("int8", "fp32"), default="int8", help="the ONNX export to measure")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: cores)")
    parser.add_argument("--export-dir", type=Path, default=None, help="default: a fresh temporary folder")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    core.offline.enforce()
    # Imported here, after the offline switches (core's own imports set them too).
    import torch
    from sentence_transformers import SentenceTransformer

    cores = os.cpu_count() or 1
    model_dir = embedding_model_dir()
    torch.set_num_threads(cores)  # as core.embedding.Embedder does
    fp32_model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    export_dir = args.export_dir or Path(tempfile.mkdtemp(prefix="tessera-onnx-"))
    reused = (export_dir / manifest_file(args.precision)).is_file()
    began = time.perf_counter()
    export_onnx(model_dir, export_dir, args.precision)
    export_s = time.perf_counter() - began
    began = time.perf_counter()
    onnx_model = OnnxEncoder(model_dir, export_dir, args.precision, threads=args.threads)  # re-uses the export
    start_s = time.perf_counter() - began

    def torch_fp32(texts: Sequence[str]) -> np.ndarray:
        vectors = fp32_model.encode(
            list(texts),
            batch_size=args.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def onnx(texts: Sequence[str]) -> np.ndarray:
        return onnx_model.encode(texts, batch_size=args.batch_size)

    onnx_name = f"onnx-{args.precision}"
    backends: dict[str, Encode] = {"torch": torch_fp32, onnx_name: onnx}
    dbpedia = load_beir(args.datasets / "dbpedia")
    texts = [passage.document_text for passage in list(dbpedia.passages.values())[: args.texts]]
    print(f"throughput over {len(texts)} DBpedia passages, batch {args.batch_size}, {args.repeats} repeats")
    throughput = _throughput(backends, texts, args.repeats)
    ratio = throughput[onnx_name].texts_per_s / throughput["torch"].texts_per_s
    cpu_ratio = throughput[onnx_name].texts_per_cpu_s / throughput["torch"].texts_per_cpu_s

    relevance: dict[str, Relevance] = {}
    for name in ("dbpedia", "business-reports"):
        dataset = dbpedia if name == "dbpedia" else load_beir(args.datasets / name)
        print(f"nDCG@10 on {name}: {len(dataset.passages)} passages, {len(dataset.queries)} queries", flush=True)
        exact, candidate = _rank(dataset, torch_fp32), _rank(dataset, onnx)
        torch_ndcg, onnx_ndcg = statistics.fmean(exact.ndcg10), statistics.fmean(candidate.ndcg10)
        diffs = np.subtract(candidate.ndcg10, exact.ndcg10)
        diff_se = float(diffs.std(ddof=1) / np.sqrt(len(diffs))) if len(diffs) > 1 else 0.0
        fidelity = mean_of(fidelity_at_k(c, e, k=10) for c, e in zip(candidate.top10, exact.top10, strict=True))
        cosines = (exact.passages * candidate.passages).sum(axis=1)
        relevance[name] = Relevance(
            passages=len(dataset.passages),
            queries=len(dataset.queries),
            ndcg10_torch=torch_ndcg,
            ndcg10_onnx=onnx_ndcg,
            relative_diff=(onnx_ndcg - torch_ndcg) / torch_ndcg,
            relative_diff_se=diff_se / torch_ndcg,
            fidelity10=fidelity or 0.0,
            passage_cosine_min=float(cosines.min()),
            passage_cosine_mean=float(cosines.mean()),
        )

    targets = {
        "ratio_at_least_2_5": ratio >= 2.5,
        "ndcg_within_1pct": all(abs(r.relative_diff) <= 0.01 for r in relevance.values()),
        "ndcg_no_more_than_1pct_lower": all(r.relative_diff >= -0.01 for r in relevance.values()),
    }
    cpu_model = _cpu_model()
    onnx_bytes = onnx_model.onnx_path.stat().st_size
    result = {
        "machine": {
            "cpu_count": cores,
            "cpu_model": cpu_model,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
        },
        "settings": {
            "precision": args.precision,
            "texts": len(texts),
            "repeats": args.repeats,
            "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(),
            "onnx_intra_op_threads": args.threads or cores,
            "onnx_inter_op_threads": 1,
        },
        "export": {
            "dir": str(export_dir),
            "reused": reused,
            "seconds": round(export_s, 2),
            "encoder_start_seconds": round(start_s, 2),  # manifest check, tokenizer and session
            "onnx_bytes": onnx_bytes,
        },
        "throughput": {
            **{name: asdict(t) for name, t in throughput.items()},
            "ratio_onnx_over_torch": ratio,
            "cpu_time_ratio_onnx_over_torch": cpu_ratio,
        },
        "relevance": {name: asdict(r) for name, r in relevance.items()},
        "targets": targets,
    }

    print()
    fp, q = throughput["torch"], throughput[onnx_name]
    print(f"machine: {cores} cores, {cpu_model}; batch {args.batch_size}, onnx threads {args.threads or cores}")
    print(
        f"export: {export_s:.1f} s ({'re-used' if reused else 'fresh'}), {onnx_bytes:,} bytes; "
        f"encoder start {start_s:.2f} s"
    )
    print(f"{'':28}{'torch':>10}{onnx_name:>10}{'ratio':>12}")
    print(f"{'texts/s (wall, median)':28}{fp.texts_per_s:>10.1f}{q.texts_per_s:>10.1f}{ratio:>12.2f}")
    print(f"{'texts/CPU-s (median)':28}{fp.texts_per_cpu_s:>10.1f}{q.texts_per_cpu_s:>10.1f}{cpu_ratio:>12.2f}")
    for name, r in relevance.items():
        print(
            f"{'nDCG@10 ' + name:28}{r.ndcg10_torch:>10.4f}{r.ndcg10_onnx:>10.4f}{r.relative_diff:>+12.2%}"
            f"  (± {r.relative_diff_se:.2%} s.e., {r.queries} queries; fidelity@10 {r.fidelity10:.3f}, "
            f"passage cosine min {r.passage_cosine_min:.4f} mean {r.passage_cosine_mean:.4f})"
        )
    print(f"targets: {targets}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

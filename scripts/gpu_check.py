"""The GPU check of issue 5 (target 6: >= 5,000 passages/s on an H100 or H200), prepared to run as one short call
of the device tool, whose machine has PyTorch and sentence-transformers but not this project's environment.

prepare (here, on the CPU) writes data/gpu-check/ (54 MiB, under the tool's 64 MiB carry limit):
  - a copy of the bundled model (verified first) with its weights stored in fp16: half the bytes, and the GPU
    path runs the model in fp16 anyway;
  - the dbpedia set (5,000 passages, 40 judged queries);
  - the fp32 reference: the CPU default backend's vectors of every passage and query;
  - manifest.json: every file's SHA-256, checked before anything is measured.

measure (on the device) loads the copy through `TorchEncoder("cuda", ...)`, the class the service uses where CUDA is
present (fp16), and prints, as a table and as JSON under --out:
  - passages/s of `TorchEncoder.encode` over --texts passages (dbpedia repeated, title + "\\n\\n" + text, as
    uploaded), at several batch sizes, median of --passes; GPU_BATCH_SIZE is the service's. The service's loop
    (pipelined: batches tokenized on a thread pool ahead of the GPU) at each size, and sentence-transformers' own
    loop (the issue's anchor, 3,316 passages/s on an H200) at GPU_BATCH_SIZE;
  - where that own loop's time goes at GPU_BATCH_SIZE: its tokenizer alone (CPU, one thread) and the model's
    forward pass alone (GPU, synchronised), each over the same texts;
  - fidelity: the cosine of each fp16 passage vector to its fp32 reference, and the share of each query's exact
    fp32 top 10 (brute force over the 5,000 passages) that the fp16 vectors also rank in their top 10.

    .venv/bin/python scripts/gpu_check.py prepare
    .venv/bin/python scripts/gpu_check.py measure --device cpu --texts 256 --passes 1 --batch-sizes 64 \\
        --split-batch-size 64 --out /tmp/g
    device: run(command="python3 scripts/gpu_check.py measure --out $OUT", carry=["data/gpu-check"], timeout_s=420)
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the device runs it from the checkout, uninstalled

import core.offline
from core.assets import MINILM, embedding_model_dir, file_sha256
from core.embedding import GPU_BATCH_SIZE, TorchEncoder
from evals.datasets import BeirDataset, load_beir

CHECK_DIR = Path("data/gpu-check")
WEIGHTS = "model.safetensors"


def _dataset_texts(dataset: BeirDataset) -> tuple[list[str], list[str]]:
    """(passage texts in corpus order, query texts in file order)."""
    return [p.document_text for p in dataset.passages.values()], list(dataset.queries.values())


def _write_manifest(root: Path) -> None:
    files = {
        path.relative_to(root).as_posix(): file_sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "manifest.json"
    }
    manifest = {"source_model_sha256": MINILM.sha256, "files": files}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def _check_manifest(root: Path) -> None:
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    for name, expected in manifest["files"].items():
        actual = file_sha256(root / name)
        if actual != expected:
            raise SystemExit(f"{root / name}: SHA-256 {actual}, the manifest says {expected}; run prepare again")
    print(f"manifest: {len(manifest['files'])} files match their SHA-256", flush=True)


def prepare(args: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from core.embedding import Embedder

    root: Path = args.dir
    if root.exists():
        shutil.rmtree(root)
    source = embedding_model_dir()  # verified against MINILM.sha256
    shutil.copytree(source, root / "model")
    weights = load_file(str(source / WEIGHTS))
    half = {name: tensor.to(torch.float16).contiguous() for name, tensor in weights.items()}
    save_file(half, root / "model" / WEIGHTS)
    shutil.copytree(args.dataset, root / "dbpedia")

    passages, queries = _dataset_texts(load_beir(root / "dbpedia"))
    embedder = Embedder(device="cpu")  # the CPU default (fp32 ONNX): the vectors every index here holds
    started = time.perf_counter()
    np.save(root / "reference_passages.npy", embedder.encode(passages))
    np.save(root / "reference_queries.npy", embedder.encode(queries))
    print(f"reference: {len(passages)} passages, {len(queries)} queries in {time.perf_counter() - started:.1f} s")
    _write_manifest(root)
    size = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    print(f"wrote {root} ({size / 2**20:.1f} MiB)")


def _synchronize(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def _throughput(encoder: TorchEncoder, texts: Sequence[str], batch_size: int, passes: int) -> dict[str, object]:
    encoder.encode(texts[: 4 * batch_size], batch_size)  # warm up: kernels, allocator, this batch shape
    seconds = []
    for _ in range(passes):
        started = time.perf_counter()
        encoder.encode(texts, batch_size)
        seconds.append(time.perf_counter() - started)
    return {
        "batch_size": batch_size,
        "pipelined": encoder.pipelined,
        "passages_per_s": len(texts) / statistics.median(seconds),
        "pass_s": [round(s, 3) for s in seconds],
    }


def _run_label(run: dict[str, object]) -> str:
    loop = "pipelined (the service's)" if run["pipelined"] else "sentence-transformers' loop"
    return f"batch {run['batch_size']}, {loop}"


def _split(model_dir: Path, device: str, texts: Sequence[str], batch_size: int) -> dict[str, float]:
    """The tokenizer alone and the forward pass alone, over the same length-sorted batches `encode` makes."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    model.half() if device.startswith("cuda") else model.float()  # as TorchEncoder does
    ordered = sorted(texts, key=len, reverse=True)
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    preprocess = getattr(model, "preprocess", None) or model.tokenize  # `tokenize` before sentence-transformers 6.1
    started = time.perf_counter()
    features = [preprocess(batch) for batch in batches]
    tokenize_s = time.perf_counter() - started
    on_device = [
        {name: value.to(device) if torch.is_tensor(value) else value for name, value in batch.items()}
        for batch in features
    ]
    synchronize = _synchronize(device)
    with torch.inference_mode():
        model(on_device[0])  # warm up
        synchronize()
        started = time.perf_counter()
        for batch in on_device:
            model(batch)
        synchronize()
    forward_s = time.perf_counter() - started
    return {
        "batch_size": batch_size,
        "tokenize_passages_per_s": len(texts) / tokenize_s,
        "forward_passages_per_s": len(texts) / forward_s,
        "word_pieces_per_passage": float(np.mean([int(batch["attention_mask"].sum()) for batch in features]))
        / batch_size,
    }


def _fidelity(encoder: TorchEncoder, root: Path, passages: Sequence[str], queries: Sequence[str]) -> dict[str, float]:
    reference_passages = np.load(root / "reference_passages.npy")
    reference_queries = np.load(root / "reference_queries.npy")
    vectors = encoder.encode(passages, GPU_BATCH_SIZE)
    query_vectors = encoder.encode(queries, GPU_BATCH_SIZE)
    cosines = np.sum(vectors * reference_passages, axis=1)  # all unit length
    shares = []
    for reference_query, query in zip(reference_queries, query_vectors, strict=True):
        exact = set(np.argsort(-(reference_passages @ reference_query), kind="stable")[:10].tolist())
        found = set(np.argsort(-(vectors @ query), kind="stable")[:10].tolist())
        shares.append(len(exact & found) / 10)
    return {
        "passage_cosine_min": float(cosines.min()),
        "passage_cosine_mean": float(cosines.mean()),
        "fidelity_at_10": float(np.mean(shares)),
        "queries": len(shares),
    }


def _environment(device: str) -> dict[str, object]:
    import sentence_transformers
    import torch

    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def measure(args: argparse.Namespace) -> None:
    root: Path = args.dir
    _check_manifest(root)
    passages, queries = _dataset_texts(load_beir(root / "dbpedia"))
    texts = (passages * (args.texts // len(passages) + 1))[: args.texts]
    environment = _environment(args.device)
    print(json.dumps(environment), flush=True)

    started = time.perf_counter()
    encoder = TorchEncoder(args.device, root / "model", pipelined=True)  # the CUDA default, also on a CPU dry run
    load_s = time.perf_counter() - started
    print(f"model loaded in {load_s:.1f} s", flush=True)
    runs = []
    own_loop = TorchEncoder(args.device, root / "model", pipelined=False)  # the anchor's: sentence-transformers'
    settings = [(encoder, size) for size in args.batch_sizes] + [(own_loop, args.split_batch_size)]
    for chosen, batch_size in settings:
        runs.append(_throughput(chosen, texts, batch_size, args.passes))
        run = runs[-1]
        print(f"  {_run_label(run)}: {run['passages_per_s']:,.0f} passages/s {run['pass_s']}", flush=True)
    split = _split(root / "model", args.device, texts, args.split_batch_size)
    fidelity = _fidelity(encoder, root, passages, queries)
    if args.device.startswith("cuda"):
        import torch

        environment["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)

    print(f"\n{'run':>36} | {'passages/s':>11} | passes (s)")
    for run in runs:
        print(f"{_run_label(run):>36} | {run['passages_per_s']:>11,.0f} | {run['pass_s']}")
    print(
        f"\nat batch {split['batch_size']}: sentence-transformers' tokenizer alone (one thread) "
        f"{split['tokenize_passages_per_s']:,.0f} passages/s, "
        f"forward alone {split['forward_passages_per_s']:,.0f} passages/s, "
        f"{split['word_pieces_per_passage']:.1f} word pieces a passage"
    )
    print(
        f"fidelity to fp32: passage cosine min {fidelity['passage_cosine_min']:.4f} "
        f"mean {fidelity['passage_cosine_mean']:.5f}; fidelity@10 {fidelity['fidelity_at_10']:.3f} "
        f"over {fidelity['queries']} queries"
    )
    report = {
        "environment": environment,
        "texts": len(texts),
        "passes": args.passes,
        "model_load_s": round(load_s, 2),
        "throughput": runs,
        "split": split,
        "fidelity": fidelity,
        "target_passages_per_s": 5000,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out / 'gpu-check.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=CHECK_DIR)
    steps = parser.add_subparsers(dest="step", required=True)
    prepare_step = steps.add_parser("prepare", help="write the check's files (here, on the CPU)")
    prepare_step.add_argument("--dataset", type=Path, default=Path("../shared/datasets/dbpedia"))
    measure_step = steps.add_parser("measure", help="measure (on the device)")
    measure_step.add_argument("--device", default="cuda")
    measure_step.add_argument("--texts", type=int, default=50_000)
    measure_step.add_argument("--passes", type=int, default=3)
    measure_step.add_argument("--batch-sizes", type=int, nargs="+", default=[256, GPU_BATCH_SIZE, 4096])
    measure_step.add_argument("--split-batch-size", type=int, default=GPU_BATCH_SIZE)
    measure_step.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    core.offline.enforce()
    (prepare if args.step == "prepare" else measure)(args)


if __name__ == "__main__":
    main()

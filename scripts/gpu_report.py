"""The report of scripts/gpu_check.sh: reads its scratch folder, writes gpu_check.md and gpu_check.json
(flat, in --out), prints a short table, and exits 1 when any step failed, timed out or did not run
(a step left out by GPU_CHECK_STEPS is "skipped", not a failure).

    python scripts/gpu_report.py --work results/gpu-work --out results/gpu --budget-s 480
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def read_steps(work: Path) -> list[dict]:
    steps = []
    for line in (work / "steps.tsv").read_text().splitlines():
        name, state, seconds, note = line.split("\t")
        steps.append({"name": name, "state": state, "seconds": int(seconds), "note": note})
    return steps


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pytest_summary(work: Path) -> str | None:
    log = work / "pytest-gpu.log"
    if not log.is_file():
        return None
    lines = [ln.strip("= ") for ln in log.read_text().splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    return lines[-1] if lines else None


def tool_report(work: Path, step: str) -> list[str]:
    """A loadtest tool's report in its step's log: the lines from its ``host: `` line on."""
    log = work / f"{step}.log"
    if not log.is_file():
        return []
    lines = log.read_text().splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("host: ")), len(lines))
    return lines[start:]


def train_summary(work: Path) -> dict | None:
    log = work / "train.log"
    if not log.is_file():
        return None
    found = [ln for ln in log.read_text().splitlines() if ln.startswith("TRAIN_SUMMARY ")]
    return json.loads(found[-1].split(" ", 1)[1]) if found else None


def service_rows(bench: dict) -> list[dict]:
    rows = []
    for name, b in bench.get("backends", {}).items():
        if "skipped" in b:
            rows.append({"backend": name, "skipped": b["skipped"]})
            continue
        for e in b.get("engine", []):
            rows.append(
                {
                    "backend": name,
                    "what": f"(a) engine, batch {e['batch']}",
                    "img_per_s": e["img_per_s"],
                    "ms": e["ms_per_batch"],
                }
            )
        for p in b.get("pipeline", []):
            rows.append(
                {
                    "backend": name,
                    "what": f"(b) in-process pipeline, {p['concurrency']} callers",
                    "img_per_s": p["img_per_s"],
                    "ms": p["latency_ms"]["p50"],
                    "p99_ms": p["latency_ms"]["p99"],
                }
            )
        rows += _http_rows(name, "(c) service over HTTP", b.get("service", {}).get("steps", []))
        rows += _open_loop_row(name, "(c) service over HTTP", b.get("service", {}))
    first = next(iter(bench.get("backends", {})), "")
    for label, entry in bench.get("layouts", {}).items():
        if "steps" not in entry:
            rows.append({"backend": first, "skipped": f"layout {label}: {entry.get('skipped')}"})
        rows += _http_rows(first, f"(e) layout {label}", entry.get("steps", []))
        rows += _open_loop_row(first, f"(e) layout {label}", entry)
    return rows


def served_lines(bench: dict) -> list[str]:
    """What each service of the bench said it served when it started (loadtest.servers.served): the
    GPU decoder behind a figure, or that JPEGs were decoded on the CPU after all. Worded as
    loadtest.servers.served_text, not imported: this report is written even where the service's
    packages do not import (a carried wheel that does not load)."""
    entries = [(f"(c) service {name}", b.get("service", {})) for name, b in bench.get("backends", {}).items()]
    entries += [(f"(e) layout {label}", entry) for label, entry in bench.get("layouts", {}).items()]
    return [
        f"{what}: {s['backend']}, {s['http_workers']} front end(s); JPEGs: {s['decode_reason']}"
        for what, entry in entries
        if (s := entry.get("serving"))
    ]


def _open_loop_row(backend: str, what: str, entry: dict) -> list[dict]:
    """loadtest.bench's open-loop step (Poisson arrivals at --open-at of the peak), when it ran."""
    o = entry.get("open_loop")
    return [_http_row(backend, f"{what}, open loop at {o['rate']:g} req/s", o)] if o else []


def _http_rows(backend: str, what: str, steps: list[dict]) -> list[dict]:
    return [_http_row(backend, f"{what}, c={s['concurrency']}", s) for s in steps]


def _http_row(backend: str, what: str, step: dict) -> dict:
    """One step over HTTP (a row of loadtest's report) as a row of this report."""
    return {
        "backend": backend,
        "what": what,
        "img_per_s": step["img_per_s"],
        "ms": step["p50_ms"],
        "p99_ms": step["p99_ms"],
        "errors": step["errors"],
        "batch_mean": step.get("server_batch_size_mean"),
        "prepare_ms": step.get("server_prepare_mean_ms"),  # per batch, the engine's (decode on the GPU path)
        "infer_ms": step.get("server_inference_mean_ms"),  # per batch, the backend call and top-k
        "prepare_gpu_ms": step.get("server_prepare_gpu_mean_ms"),  # per batch, its span on the stream (CUDA events)
        "infer_gpu_ms": step.get("server_inference_gpu_mean_ms"),
        "request_ms": step.get("server_request_mean_ms"),  # per answered request, the server's own time
        "decoded": step.get("server_decoded") or "",  # images by where they were decoded, e.g. "gpu:3000"
    }


def build_report(work: Path, budget_s: int) -> dict:
    gpu = (work / "gpu.txt").read_text().strip() if (work / "gpu.txt").is_file() else "unknown GPU"
    bench = load_json(work / "bench" / "bench.json") or {}
    return {
        "gpu": gpu,
        "budget_s": budget_s,
        "steps": read_steps(work),
        "pytest": pytest_summary(work),
        "engine_wire": tool_report(work, "engine-wire"),
        "gpu_decode": tool_report(work, "gpu-decode"),
        "train": train_summary(work),
        "bench_train": load_json(work / "bench_train.json"),
        "bench_train_compile": load_json(work / "bench_train_compile.json"),
        "service": service_rows(bench),
        "served": served_lines(bench),
    }


def _stream_spans(row: dict) -> str:
    """ " (on their CUDA streams P and I ms)" where the server timed its stages with CUDA events, else ""."""
    if row.get("prepare_gpu_ms") is None and row.get("infer_gpu_ms") is None:
        return ""
    return f" (on their CUDA streams {_fmt(row.get('prepare_gpu_ms'), '.2f')} and {_fmt(row.get('infer_gpu_ms'), '.2f')} ms)"


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    md = [
        f"# GPU check: {report['gpu']}",
        "",
        f"Budget {report['budget_s']} s for the whole run. "
        + (  # gpu_check.sh GPU_CHECK_REHEARSAL=1 writes that line for the GPU's name
            "A rehearsal on a CPU host: no figure below is a GPU's."
            if report["gpu"].startswith("NO GPU")
            else "Every figure below was measured on this GPU."
        ),
        "",
        "| step | state | seconds | note |",
        "|---|---|---:|---|",
    ]
    md += [f"| {s['name']} | {s['state']} | {s['seconds']} | {s['note']} |" for s in report["steps"]]
    md += ["", f"pytest (tests/gpu, preprocessing, model): {report['pytest'] or 'no summary'}", ""]
    if report["service"]:
        md += [
            "## Inference and the service (loadtest.bench --gpu)",
            "",
            "| backend | measurement | img/s | p50 ms (ms/batch for (a)) | p99 ms | note |",
            "|---|---|---:|---:|---:|---|",
        ]
        for r in report["service"]:
            if "skipped" in r:
                md.append(f"| {r['backend']} | not run | - | - | - | {r['skipped'][:120]} |")
                continue
            note = (
                f"{r.get('errors', 0)} errors, mean batch {_fmt(r.get('batch_mean'), '.1f')}, per batch prepare "
                f"{_fmt(r.get('prepare_ms'), '.2f')} ms, infer {_fmt(r.get('infer_ms'), '.2f')} ms{_stream_spans(r)}; "
                f"the server's mean per request {_fmt(r.get('request_ms'), '.2f')} ms; decoded {r.get('decoded') or '-'}"
                if "errors" in r
                else ""
            )
            md.append(
                f"| {r['backend']} | {r['what']} | {r['img_per_s']:.0f} | {_fmt(r['ms'], '.2f')} | "
                f"{_fmt(r.get('p99_ms'), '.2f')} | {note} |"
            )
        md.append("")
    if report["served"]:
        md += ["What each service said it served when it started (`/v1/models`):", ""]
        md += [f"- {line}" for line in report["served"]] + [""]
    for key, title in (
        ("engine_wire", "The engine's own ceiling (loadtest.engine_wire)"),
        ("gpu_decode", "The engine's GPU JPEG path without HTTP (loadtest.gpu_decode)"),
    ):
        if report[key]:
            md += [f"## {title}", "", "```", *report[key], "```", ""]
    for key, title in (
        ("bench_train", "Training throughput (model.bench_train)"),
        ("bench_train_compile", "Training throughput with torch.compile"),
    ):
        b = report[key]
        if b:
            md += [
                f"## {title}",
                "",
                b["title"],
                "",
                "| source | precision | memory format | batch | img/s | ms/step |",
                "|---|---|---|---:|---:|---:|",
            ]
            md += [
                f"| {r['source']} | {r['precision']} | {r['memory_format']} | {r['batch_size']} | "
                f"{r['images_per_s']:.0f} | {r['ms_per_step']:.1f} |"
                for r in b["rows"]
            ]
            md.append("")
    t = report["train"]
    if t:
        md += [
            "## Short training run (synthetic 10 classes, 4 epochs + resume to 8, fp16, channels_last)",
            "",
            "| epoch | train loss | val top-1 error | train img/s |",
            "|---:|---:|---:|---:|",
        ]
        md += [
            f"| {e} | {loss} | {err} | {ips} |"
            for e, loss, err, ips in zip(
                t["epochs"], t["train_loss"], t["val_top1_err"], t["train_img_per_s"], strict=True
            )
        ]
        md.append("")
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="gpu_check.sh's scratch folder")
    p.add_argument("--out", type=Path, required=True, help="where gpu_check.md and gpu_check.json go")
    p.add_argument("--budget-s", type=int, required=True, help="the run's time budget, for the report")
    args = p.parse_args(argv)
    report = build_report(args.work, args.budget_s)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"\n== summary: {report['gpu']}")
    for s in report["steps"]:
        print(f"  {s['name']:<22} {s['state']:<9} {s['seconds']:>4} s  {s['note']}")
    for r in report["service"]:
        if "skipped" not in r and r["what"].startswith(("(c)", "(e)")):
            print(
                f"  {r['backend']} {r['what']}: {r['img_per_s']:.0f} img/s, p50 {_fmt(r['ms'], '.2f')} ms, "
                f"p99 {_fmt(r['p99_ms'], '.2f')} ms"
            )
    for line in report["served"]:
        print(f"  {line}")
    bad = [s["name"] for s in report["steps"] if s["state"] not in ("ok", "skipped")]  # skipped: not asked for
    if bad:
        print(f"error: not ok: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`bitsmith demo`: the whole platform in a few minutes (data -> train -> quantize -> eval -> report)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from .common import (executor_option, fmt_value, info, no_cache_option, open_db, settings_from, short, stderr_console,
                     stdout_console)


def demo_dir() -> Path:
    from ..provenance import source_root

    return source_root() / "examples" / "demo"


@click.command()
@click.option("--pipeline", "pipeline_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="pipeline YAML (default: examples/demo/pipeline.yaml)")
@executor_option()
@no_cache_option("rerun every step")
@click.pass_context
def demo(ctx: click.Context, pipeline_file: Path | None, executor: str, no_cache: bool) -> None:
    """Build the corpus, pretrain a small LM, quantize it (RTN, GPTQ; 4 and 3 bits), evaluate all."""
    from ..errors import UsageError
    from ..pipeline import load_pipeline, run_pipeline
    from ..scheduler.ray_executor import ensure_ray

    settings = settings_from(ctx)
    path = pipeline_file or demo_dir() / "pipeline.yaml"
    if not path.exists():
        raise UsageError(f"{path}: demo pipeline not found; expected a source checkout with examples/demo/")
    t0 = time.time()
    err = stderr_console()
    err.print(f"[bold]bitsmith demo[/]  store: {settings.db_url}  artifacts: {settings.artifact_root}")
    stages = load_pipeline(path)
    total = len(stages) + 1
    err.print(f"[bold]1/{total} data[/]: the built-in corpus (Python's bundled docs) and the arithmetic task")
    _register_datasets(ctx)
    if executor == "ray":
        err.print("starting an embedded local Ray instance ...")
        ensure_ray(settings.ray_address, log_to_driver=False)
    watcher = _StageWatcher(settings)

    def on_stage(stage: Any, run_ids: list[str]) -> None:
        n = stages.index(stage) + 2
        err.print(f"[bold]{n}/{total} {stage.name}[/]: {len(run_ids)} job(s)")

    try:
        results = run_pipeline(stages, settings, executor=executor, no_cache=no_cache, on_stage=on_stage,
                               watch=watcher.update)
    finally:
        watcher.stop()
    hits = sum(r.cache_hits for r in results)
    total = sum(len(r.run_ids) for r in results)
    _print_results(ctx, results)
    err.print(f"done in {time.time() - t0:.0f} s; {hits} of {total} jobs were cache hits"
              + ("" if hits == total else " (run `make demo` again: every step will be one)"))


def _register_datasets(ctx: click.Context) -> None:
    import tempfile

    from bitsmith.workers.data.arithmetic import generate_arithmetic
    from bitsmith.workers.data.corpus import build_builtin_corpus

    from ..artifacts import temp_name
    from ..register import register_path

    settings = settings_from(ctx)
    settings.home.mkdir(parents=True, exist_ok=True)
    builders = {
        "corpus-pydoc": build_builtin_corpus,
        "arithmetic-1digit": lambda dest: generate_arithmetic(
            dest, n_train=200, n_calibration=10, n_test=20, min_operand=0, max_operand=9, operations=("+",), seed=0),
    }
    for name, build in builders.items():
        with tempfile.TemporaryDirectory(dir=settings.home, prefix=f".data-{temp_name()}-") as tmp:
            rec = register_path(open_db(ctx), settings, build(Path(tmp) / "dataset"), kind="dataset", name=name)
        splits = ", ".join(f"{k} {v.get('records')}" for k, v in rec.metadata.get("splits", {}).items())
        info(f"  {name} {short(rec.digest)}: {splits}")


class _StageWatcher:
    """A live table (stderr) of the running stage: status and the latest progress metric per job."""

    def __init__(self, settings: Any):
        from rich.live import Live

        self.settings = settings
        self.console = stderr_console()
        self.live = Live(console=self.console, refresh_per_second=2, transient=False, auto_refresh=False)
        self.started = False
        self.reported: set[str] = set()

    def update(self, run_ids: list[str]) -> None:
        from rich.table import Table

        from .. import store
        from .common import fmt_duration, status_text

        db = store.open_database(self.settings.db_url)
        table = Table(box=None, pad_edge=False)
        for col in ("run", "name", "status", "took", "latest"):
            table.add_column(col)
        for run_id in run_ids:
            r = store.get_run(db, run_id)
            latest = ""
            metrics = store.get_metrics(db, run_id)
            stepped = [m for m in metrics if m.step is not None and not m.key.startswith("rel_error/")]
            if stepped:
                last_step = max(m.step for m in stepped)
                shown = [m for m in stepped if m.step == last_step][:3]
                latest = f"step {last_step}: " + ", ".join(f"{m.key}={fmt_value(m.value)}" for m in shown)
            note = " (cache hit)" if r.cache_hit_of else ""
            table.add_row(short(r.id, 10), r.name or "", status_text(r.status) + note, fmt_duration(r), latest)
            if not self.console.is_terminal and r.status in ("succeeded", "failed", "cancelled") \
                    and r.id not in self.reported:  # a log file gets one line per finished job
                self.reported.add(r.id)
                self.console.print(f"  {short(r.id, 10)} {r.name or ''}: {status_text(r.status)}{note} "
                                   f"in {fmt_duration(r)}")
        if not self.console.is_terminal:
            return
        if not self.started:
            self.live.start()
            self.started = True
        self.live.update(table, refresh=True)

    def stop(self) -> None:
        if self.started:
            self.live.stop()
            self.started = False


def _print_results(ctx: click.Context, results: list[Any]) -> None:
    from rich.table import Table

    import shutil

    from .. import lineage as render
    from .. import store
    from ..artifacts import materialize

    db = open_db(ctx)
    runs = [store.get_run(db, rid) for r in results for rid in r.run_ids]
    evals = [r.id for r in runs if r.kind == "eval"]
    finals = store.final_metrics(db, [r.id for r in runs])
    rows = []
    for rid in evals:
        run = store.get_run(db, rid)
        model_edge = next(e for e in store.run_inputs(db, rid) if e.role == "model")
        model = store.get_artifact(db, model_edge.digest)
        m = finals.get(rid, {})
        rows.append({"name": run.name, "model": model, "ppl": m.get("test/token_ppl"), "kl": m.get("kl"),
                     "method": model.metadata.get("method", "fp32"), "bits": model.metadata.get("bits"),
                     "eff": model.metadata.get("effective_bits_per_weight", 32.0), "run": rid,
                     "avg": model.metadata.get("avg_bits")})
    fp = next((r for r in rows if r["method"] == "fp32"), None)
    table = Table(title="demo results: held-out token perplexity (pydoc test split) and KL to the fp32 model")
    for col in ("model", "method", "bits", "effective bits/w", "token ppl", "Δ ppl vs fp32", "KL to fp32"):
        table.add_column(col, justify="right" if col not in ("model", "method") else "left", no_wrap=True)
    for r in rows:
        delta = f"{100 * (r['ppl'] / fp['ppl'] - 1):+.2f}%" if fp and r["ppl"] and fp["ppl"] else "-"
        bits = (str(r["bits"]) if r["bits"] else f"{r['avg']:.2f} mixed" if r["avg"] else "32")
        table.add_row(r["model"].name or short(r["model"].digest), r["method"], bits,
                      f"{r['eff']:.3f}", fmt_value(r["ppl"]) if r["ppl"] else "-", delta,
                      f"{r['kl']:.5f}" if r["kl"] is not None else "-")
    con = stdout_console()
    con.print(table)
    worst = next((r for r in rows if r["name"] == "demo-eval-gptq3"), rows[-1] if rows else None)
    if worst:
        report = next((e for e in store.run_outputs(db, worst["run"]) if e.role == "report"), None)
        if report:
            graph = store.lineage(db, digest=report.digest, direction="up")
            con.print("\n[bold]lineage[/] of the GPTQ 3-bit evaluation report (bitsmith lineage "
                      f"{short(report.digest)}):")
            con.print(render.render_tree(graph, ("artifact", report.digest), down=False))
    plot = _plot_quality_vs_bits(ctx, rows)
    train = next((r.id for r in runs if r.kind == "train" and r.spec["mode"]["type"] == "pretrain"), None)
    for search_run in (r for r in runs if r.kind == "search"):
        m = finals.get(search_run.id, {})
        if "test/token_ppl" in m and "uniform/test/token_ppl" in m:
            dp = f", additive-error DP {m['dp/test/token_ppl']:.3f}" if "dp/test/token_ppl" in m else ""
            con.print(f"\n[bold]bit allocation[/] ({search_run.name}, {search_run.spec['method']['type']} at "
                      f"{m.get('avg_bits', float('nan')):.2f} bits/weight): held-out token ppl "
                      f"{m['test/token_ppl']:.3f} vs uniform {m['uniform/test/token_ppl']:.3f}{dp} "
                      "(the search's own report: same levels, same budget, its test chunks)")
    for rl_run in (r for r in runs if r.kind == "rl"):
        m = finals.get(rl_run.id, {})
        if "accuracy/train_before" in m:
            con.print(f"\n[bold]RL[/] ({rl_run.name}, GRPO from the SFT warm start): greedy accuracy on its "
                      f"training prompts {m['accuracy/train_before']:.2f} -> {m['accuracy/train_after']:.2f}"
                      + (f", held-out {m['accuracy/test_before']:.2f} -> {m['accuracy/test_after']:.2f}"
                         if "accuracy/test_after" in m else ""))
    curve = next((e for e in store.run_outputs(db, train) if e.role == "curve"), None) if train else None
    info("\nplots:")
    if curve:
        s = settings_from(ctx)
        src = materialize(s.artifact_root, curve.digest, s.home / "cache")
        dest = s.home / "demo" / "training_curve.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        info(f"  training curve:      {dest}  (artifact {short(curve.digest)})")
    if plot:
        info(f"  quality vs bits:     {plot}")
    info("next: bitsmith runs list   bitsmith artifacts list   bitsmith runs compare "
         + " ".join(short(r['run'], 8) for r in rows[:3]))


def _plot_quality_vs_bits(ctx: click.Context, rows: list[dict[str, Any]]) -> Path | None:
    if not rows or any(r["ppl"] is None for r in rows):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = settings_from(ctx).home / "demo" / "quality_vs_bits.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, marker in (("rtn", "o"), ("gptq", "s")):
        pts = sorted((r["eff"], r["ppl"]) for r in rows if r["method"] == method)
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=method.upper())
    for r in rows:
        if r["method"].startswith("search-"):
            ax.plot([r["eff"]], [r["ppl"]], marker="*", markersize=12, linestyle="none",
                    label=f"{r['method']} (mixed, per-channel levels)")
    fp = [r for r in rows if r["method"] == "fp32"]
    if fp:
        ax.axhline(fp[0]["ppl"], color="gray", linestyle="--", label="fp32")
    ax.set_xlabel("effective bits per weight (codes + scales + zeros)")
    ax.set_ylabel("held-out token perplexity")
    ax.set_title("demo: quality vs bits")
    ax.legend()
    fig.tight_layout()
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out

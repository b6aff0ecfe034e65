"""`search` jobs: per-layer bit allocation of one model under a budget (mixed-precision quantization).

Reads top to bottom: load the model and calibration texts; get the level database (every layer at
every width, a derived artifact shared across runs); turn the budget into per-layer costs; allocate with
the chosen method and always with `uniform` (and `dp`, which is free once the database exists);
measure each allocation on the held-out test split; write the allocation, the stitched quantized model,
the report and its plots.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bitsmith.platform.context import OutputArtifact, RunContext, WorkerOutputs
from bitsmith.platform.digests import write_artifact_meta
from bitsmith.platform.errors import DataError, SpecError
from bitsmith.platform.specs.search import (BisectMethod, DPMethod, EffectiveBitsBudget, EvoMethod, HessianMethod,
                                            LinearFit, LinearMethod, QualityBudget, SearchSpec, SizeBudget,
                                            UniformMethod)

from . import quant_format
from .calibration import architecture_layout, calibration_batches, plan_layers
from .allocation import bootstrap, evo, knapsack, linear, sensitivity
from .allocation.bisect import bisect_drop
from .allocation.levels import AllocationModel, LevelDB, build_level_db, level_db_key, load_level_db
from .allocation.levels import CALIBRATION_SEED
from .allocation.uniform import quantize_uniform, uniform_quantize_spec
from .models import load_model_and_tokenizer
from .registry import Registry

log = logging.getLogger(__name__)
Allocation = list[int]


# -- methods registry ----------------------------------------------------------------------------------
AllocateFn = Callable[[Any, "SearchEnv"], tuple[Allocation, dict[str, Any]]]
ALLOCATORS: Registry[AllocateFn] = Registry("method.type", "search method")
allocator, allocator_for = ALLOCATORS.register, ALLOCATORS.lookup


# -- the job ----------------------------------------------------------------------------------------
def run(spec: SearchSpec, ctx: RunContext) -> WorkerOutputs:
    start = time.perf_counter()
    torch.set_num_threads(spec.compute.threads)  # resolved from the job's cpus when the spec was parsed
    ctx.seed_everything()
    model_in, data_in = ctx.input("model"), ctx.input("calibration")
    if quant_format.is_bitsmith_quantized(model_in.path):
        raise DataError(f"inputs.model: {model_in.path} is already quantized; expected an unquantized model")
    model, tokenizer = load_model_and_tokenizer(model_in.path, "cpu", torch.float32)
    from .data.datasets import read_texts

    texts = read_texts(data_in.path, "calibration")

    # 1. the level database, shared by every search on the same model, data and level settings
    check_group_sizes(spec, model)
    levels_key = level_db_key(model_in.digest, data_in.digest, spec.levels, spec.modules.model_dump(mode="json"))

    seconds: dict[str, float] = {}  # per phase, for the report

    def build(out: Path) -> None:
        _build_levels(spec, ctx, model, tokenizer, texts, out, db_key, model_in.digest, seconds)

    db_key = ctx.derived_key(levels_key, build)  # the key it is stored under: the code fingerprint mixed in
    t0 = time.perf_counter()
    db_dir = ctx.cached_artifact(levels_key, "level-db", build)
    db = load_level_db(db_dir)
    seconds["level_db"] = time.perf_counter() - t0  # built, or found (then no calibration/quantize entries)

    # 2. the budget as per-layer integer costs
    costs, budget_cost = budget_costs(spec, db)
    env = SearchEnv(spec, ctx, db, db_key, model_in.path, model, tokenizer, costs, budget_cost, texts)

    # 3. allocate: the chosen method, uniform always, dp when cheap
    t0 = time.perf_counter()
    chosen, details = allocator_for(spec.method.type)(spec.method, env)
    seconds["allocate"] = time.perf_counter() - t0  # evo: fitness reference logits and evaluations
    uniform = uniform_allocation(costs, budget_cost if budget_cost is not None
                                 else knapsack.allocation_cost(costs, chosen), spec)
    results = {spec.method.type: chosen, "uniform": uniform}
    if "linear" in details and "linear" not in results:  # evo warm-started from the linearity model
        results["linear"] = details["linear"]["allocation"]
    if spec.report.baseline_dp and budget_cost is not None and "dp" not in results:
        results["dp"] = allocate_dp(DPMethod(), env)[0]

    # 4. the uniform row as a `quantize` job builds it, and the baseline models the spec names
    built: dict[str, nn.Module] = {}
    uniform_spec = None
    t0 = time.perf_counter()
    if spec.report.uniform == "quantize":
        uniform_spec = uniform_quantize_spec(spec, *db.grid[uniform[0]])
        n_blocks = len(model.get_submodule(architecture_layout(model).blocks))
        with ctx.progress(total=n_blocks, desc=f"uniform {uniform_spec.bits}-bit as quantize") as bar:
            built["uniform"] = quantize_uniform(uniform_spec, model, tokenizer, texts, progress=bar)
    seconds["uniform_quantize"] = time.perf_counter() - t0
    baselines = load_baselines(spec, ctx, db, model_in.digest)

    # 5. measure every allocation and baseline on the held-out test split
    t0 = time.perf_counter()
    rows = measure(env, results, built, baselines)
    seconds["report_eval"] = time.perf_counter() - t0
    log.info("search: %s", json.dumps(rows))
    extra = {"phase_seconds": seconds, "uniform_built_as": spec.report.uniform,
             "allocations": {name: db.bits_of(allocation) if db.single_group else db.levels_of(allocation)
                             for name, allocation in results.items()},
             "uniform_quantize_spec": uniform_spec.model_dump(mode="json") if uniform_spec is not None else None}
    return write_outputs(env, chosen, rows, details, model_in.digest, time.perf_counter() - start, extra)


def check_group_sizes(spec: SearchSpec, model: nn.Module) -> None:
    """SpecError naming `levels.group_sizes` (or `levels.group_size`) and the layer when a size does not divide
    a selected layer's in_features; checked before anything is built."""
    layout = architecture_layout(model)
    for group in (spec.levels.group_size, *spec.levels.group_sizes):
        try:
            plan_layers(model, layout, bits=spec.levels.bits[0], group_size=group, modules=spec.modules)
        except SpecError as e:
            field = "levels.group_size" if group == spec.levels.group_size else "levels.group_sizes"
            raise SpecError(f"{field}: {str(e).removeprefix('group_size: ')}") from None


def _build_levels(spec: SearchSpec, ctx: RunContext, model: nn.Module, tokenizer: Any, texts: list[str],
                  out: Path, key: str, model_digest: str, seconds: dict[str, float]) -> None:
    cfg = spec.levels
    layout = architecture_layout(model)
    plans = plan_layers(model, layout, bits=cfg.bits[0], group_size=cfg.group_size, modules=spec.modules)
    t0 = time.perf_counter()
    batches = calibration_batches(texts, tokenizer, cfg.sequences, cfg.seq_len, cfg.batch_size, CALIBRATION_SEED)
    seconds["level_db_tokenize"] = time.perf_counter() - t0
    phases: dict[str, float] = {}
    n_blocks = len(model.get_submodule(layout.blocks))
    meta = {"key": key, "base_model_digest": model_digest, "bits": list(cfg.bits), "group_size": cfg.group_size,
            **({"group_sizes": list(cfg.group_sizes)} if cfg.group_sizes else {}),
            "method": cfg.method.type, "layers": len(plans)}
    with ctx.progress(total=n_blocks, desc="level database") as bar:
        build_level_db(out, model, plans, batches, cfg, meta, progress=bar, seconds=phases)
    seconds.update({f"level_db_{k}": v for k, v in phases.items()})


def budget_costs(spec: SearchSpec, db: LevelDB) -> tuple[list[list[int]], int | None]:
    """Per-layer costs in bits and the budget in the same unit; DataError when no allocation can meet it."""
    budget = spec.budget
    if isinstance(budget, SizeBudget):
        costs = [[lv.storage_bits for lv in layer.levels] for layer in db.layers]
        cap, field, shown = budget.size_bytes * 8, "budget.size_bytes", lambda c: f"{math.ceil(c / 8)} bytes"
    elif isinstance(budget, EffectiveBitsBudget):  # the same stored bits, per weight
        costs = [[lv.storage_bits for lv in layer.levels] for layer in db.layers]
        cap = math.floor(budget.bits_per_weight * db.total_params() + 1e-6)
        field, shown = "budget.bits_per_weight", lambda c: f"{c / db.total_params():.4g} effective bits per weight"
    else:
        costs = [[lv.bits * layer.numel for lv in layer.levels] for layer in db.layers]
        if isinstance(budget, QualityBudget):
            return costs, None
        cap = math.floor(budget.bits_per_weight * db.total_params() + 1e-6)
        field, shown = "budget.bits_per_weight", lambda c: f"{c / db.total_params():.4g} bits per weight"
    low, high = sum(min(c) for c in costs), sum(max(c) for c in costs)
    if cap < low:
        raise DataError(f"{field}: below the smallest allocation (every layer at the lowest level: {shown(low)}); "
                        f"expected between {shown(low)} and {shown(high)}")
    if cap > high:
        raise DataError(f"{field}: above the largest allocation (every layer at the highest level: "
                        f"{shown(high)}), so there is nothing to search; expected between {shown(low)} and "
                        f"{shown(high)}")
    return costs, cap


@dataclass
class SearchEnv:
    """What every allocation method may use."""

    spec: SearchSpec
    ctx: RunContext
    db: LevelDB
    db_key: str
    model_dir: Path
    model: nn.Module  # the unquantized model (read-only)
    tokenizer: Any
    costs: list[list[int]]
    budget_cost: int | None  # None for a quality budget
    calibration_texts: list[str]


# -- methods ----------------------------------------------------------------------------------------
@allocator("uniform")
def allocate_uniform(method: UniformMethod, env: SearchEnv) -> tuple[Allocation, dict[str, Any]]:
    return uniform_allocation(env.costs, env.budget_cost, env.spec), {}


def _error_losses(env: SearchEnv, weighting: str) -> list[list[float]]:
    return [[lv.rel_error * (layer.numel if weighting == "params" else 1) for lv in layer.levels]
            for layer in env.db.layers]


@allocator("dp")
def allocate_dp(method: DPMethod, env: SearchEnv) -> tuple[Allocation, dict[str, Any]]:
    allocation = knapsack.solve(method.solver, env.costs, _error_losses(env, method.weighting), env.budget_cost)
    if allocation is None:
        raise DataError("budget: the knapsack found no allocation within the budget; expected a larger budget")
    return allocation, {"solver": method.solver}


@allocator("hessian")
def allocate_hessian(method: HessianMethod, env: SearchEnv) -> tuple[Allocation, dict[str, Any]]:
    def batch() -> Tensor:
        cfg = env.spec.levels
        return calibration_batches(env.calibration_texts, env.tokenizer, method.gradient_sequences, cfg.seq_len,
                                   method.gradient_sequences, env.ctx.seed)[0]

    losses, extra = sensitivity.sensitivities(method, env.db, lambda: copy.deepcopy(env.model), batch, env.ctx.seed,
                                                  progress=env.ctx.progress)
    allocation = knapsack.solve(method.solver, env.costs, losses, env.budget_cost)
    if allocation is None:
        raise DataError("budget: the knapsack found no allocation within the budget; expected a larger budget")
    return allocation, {"sensitivity": method.sensitivity, "solver": method.solver, **extra,
                        "losses": {layer.name: row for layer, row in zip(env.db.layers, losses)}}


def fitness_reference(env: SearchEnv, sequences: int, seq_len: int, top_k: int | None) -> tuple[Tensor, Path]:
    """Fitness sequences (calibration windows, seed + 1) and the file of the unquantized model's log-probs on
    them, computed once per run (a resumed run finds it in its work dir)."""
    from .evaluators.kl import compute_reference_logits

    seqs = torch.cat(calibration_batches(env.calibration_texts, env.tokenizer, sequences, seq_len, sequences,
                                         env.ctx.seed + 1))
    reference_file = env.ctx.work_dir / f"fitness_reference-{sequences}x{seq_len}-{top_k or 'all'}.safetensors"
    if not reference_file.exists():
        from safetensors.torch import save_file

        save_file(compute_reference_logits(env.model, seqs, top_k=top_k), str(reference_file))
    return seqs, reference_file


def _fitness_pool(env: SearchEnv, n_actors: int, reference_file: Path) -> Any:
    """The job's threads shared among the actors (the job waits while they score; in-process under the local
    executor, where an actor with one thread would leave the job single-threaded for the rest of its run)."""
    threads = max(1, env.spec.compute.threads // n_actors)
    return env.ctx.actor_pool(evo.FitnessActor, n_actors, str(env.model_dir), str(env.db.path), str(reference_file),
                              threads=threads)


def fit_linear_allocation(fit: LinearFit, env: SearchEnv, pool: Any, n_sequences: int,
                          ) -> tuple[Allocation, dict[str, Any]]:
    """Measure `fit.samples` random configurations around the budget's uniform allocation on all fitness
    sequences, fit the linearity model on all but the held-out ones (reported: how well it predicts them),
    refit on all, solve the knapsack exactly and measure the solution's fitness too."""
    rng = random.Random(env.ctx.seed + 17)
    centre = fill_greedily(uniform_allocation(env.costs, env.budget_cost, env.spec), env.costs, env.budget_cost,
                           random.Random(env.ctx.seed))
    configs = linear.sample_configurations(len(env.db.grid), len(env.db.layers), centre, fit.samples, fit.mix, rng)
    every = list(range(n_sequences))
    measured: list[float] = []
    step = 4 * getattr(pool, "size", 1)
    with env.ctx.progress(total=len(configs), desc="linear: fitness samples") as bar:
        for start in range(0, len(configs), step):
            part = configs[start:start + step]
            measured += pool.map("kl", [{"levels": c, "sequences": every} for c in part])
            bar.update(len(part))
    y = np.asarray(measured, dtype=np.float64)
    errors, shares = linear.layer_errors(env.db), linear.parameter_shares(env.db)
    if fit.fit == "probe":
        return _probe_allocation(fit, env, pool, every, configs, y, errors)
    x = linear.features(errors, configs)
    n_held = int(len(configs) * fit.holdout)
    held = {}
    if n_held >= 3:
        trained = linear.fit(x[n_held:], y[n_held:], shares, fit.ridge, seed=env.ctx.seed)
        predicted = x[:n_held] @ trained.alpha
        held = {"configurations": n_held, "ridge": trained.ridge, **linear.correlations(predicted, y[:n_held]),
                "predicted": predicted.tolist(), "measured": y[:n_held].tolist()}
    result = linear.fit(x, y, shares, fit.ridge, seed=env.ctx.seed)
    allocation = knapsack.solve(fit.solver, env.costs, linear.losses(result.alpha, errors), env.budget_cost)
    if allocation is None:
        raise DataError("budget: the knapsack found no allocation within the budget; expected a larger budget")
    solution_kl = pool.map("kl", [{"levels": allocation, "sequences": every}])[0]
    details = {"samples": len(configs), "mix": fit.mix, "solver": fit.solver, "ridge": result.ridge,
               "cv_error": result.cv_error, "scale": result.scale, "held_out": held,
               "fitness_evaluations": len(configs) + 1, "fitness_sequences": n_sequences,
               "sample_kl": {"min": float(y.min()), "median": float(np.median(y)), "max": float(y.max())},
               "solution": {"predicted_kl": float(linear.predict(result.alpha, errors, [allocation])[0]),
                            "measured_kl": solution_kl},
               "alpha": {layer.name: float(a) for layer, a in zip(env.db.layers, result.alpha)},
               "allocation": allocation}
    return allocation, details


def probed_levels(fit: LinearFit, db: LevelDB) -> list[int]:
    """The level indices `fit.probe_bits` names (every group size of each width); every level when empty."""
    return [i for i, (bits, _) in enumerate(db.grid) if not fit.probe_bits or bits in fit.probe_bits]


def _probe_allocation(fit: LinearFit, env: SearchEnv, pool: Any, every: list[int], configs: list[Allocation],
                      measured: np.ndarray, errors: np.ndarray) -> tuple[Allocation, dict[str, Any]]:
    """`linear` with `fit: probe`: every layer alone at each probed level (the rest unquantized) on all fitness
    sequences, the separable losses solved exactly; the random joint configurations test the additive model."""
    n_layers = len(env.db.layers)
    probes = linear.probe_configurations(n_layers, probed_levels(fit, env.db))
    kls: list[float] = []
    step = 4 * getattr(pool, "size", 1)
    with env.ctx.progress(total=len(probes), desc="linear: single-layer probes") as bar:
        for start in range(0, len(probes), step):
            part = probes[start:start + step]
            items = []
            for layer, level in part:
                levels: list[int | None] = [None] * n_layers
                levels[layer] = level
                items.append({"levels": levels, "sequences": every})
            kls += pool.map("kl", items)
            bar.update(len(part))
    alpha, table = linear.probe_losses(errors, probes, kls)
    allocation = knapsack.solve(fit.solver, env.costs, table, env.budget_cost)
    if allocation is None:
        raise DataError("budget: the knapsack found no allocation within the budget; expected a larger budget")
    loss = np.asarray(table)
    predicted = np.array([float(loss[np.arange(n_layers), c].sum()) for c in configs])
    solution_kl = pool.map("kl", [{"levels": allocation, "sequences": every}])[0]
    details = {"fit": "probe", "probes": len(probes), "probed_levels": [env.db.level_name(i)
                                                                        for i in probed_levels(fit, env.db)],
               "samples": len(configs), "mix": fit.mix, "solver": fit.solver,
               "held_out": {"configurations": len(configs), **linear.correlations(predicted, measured),
                            "predicted": predicted.tolist(), "measured": measured.tolist()},
               "fitness_evaluations": len(probes) + len(configs) + 1, "fitness_sequences": len(every),
               "sample_kl": {"min": float(measured.min()), "median": float(np.median(measured)),
                             "max": float(measured.max())} if len(measured) else None,
               "solution": {"predicted_kl": float(loss[np.arange(n_layers), allocation].sum()),
                            "measured_kl": solution_kl},
               "alpha": {layer.name: float(a) for layer, a in zip(env.db.layers, alpha)},
               "probe_kl": {layer.name: row for layer, row in zip(env.db.layers, table)},
               "allocation": allocation}
    return allocation, details


@allocator("linear")
def allocate_linear(method: LinearMethod, env: SearchEnv) -> tuple[Allocation, dict[str, Any]]:
    seqs, reference_file = fitness_reference(env, method.fitness_sequences, method.fitness_seq_len,
                                             method.fitness_top_k)
    with _fitness_pool(env, method.n_actors, reference_file) as pool:
        return fit_linear_allocation(method, env, pool, seqs.shape[0])


@allocator("evo")
def allocate_evo(method: EvoMethod, env: SearchEnv) -> tuple[Allocation, dict[str, Any]]:
    ctx = env.ctx
    # Fitness sequences: calibration windows with the unquantized model's log-probs cached once.
    seqs, reference_file = fitness_reference(env, method.fitness_sequences, method.fitness_seq_len,
                                             method.fitness_top_k)
    resume = None
    if ctx.resume_checkpoint is not None and (Path(ctx.resume_checkpoint) / evo.STATE_FILE).is_file():
        resume = evo.load_state(Path(ctx.resume_checkpoint), env.db_key, len(env.db.layers))
        log.info("evo: resuming at generation %d", resume.generation)
    resumed_from = resume.generation if resume is not None else None

    def save(state: dict[str, Any], generation: int) -> None:
        directory = ctx.work_dir / "checkpoints" / f"evo-{generation:06d}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / evo.STATE_FILE).write_text(json.dumps(state))
        ctx.save_checkpoint(directory, generation, {"generation": generation, "method": "evo"})

    extra: dict[str, Any] = {}
    with _fitness_pool(env, method.n_actors, reference_file) as pool:
        started = time.perf_counter()
        if method.init == "linear":  # refitted on resume too (deterministic), so its row is always reported
            start, extra["linear"] = fit_linear_allocation(method.linear, env, pool, seqs.shape[0])
            extra["linear"]["seconds"] = time.perf_counter() - started
        elif method.init == "dp":
            start = knapsack.solve("dp", env.costs, _error_losses(env, "params"), env.budget_cost)
        else:
            start = fill_greedily(uniform_allocation(env.costs, env.budget_cost, env.spec), env.costs,
                                  env.budget_cost, random.Random(ctx.seed))
        with ctx.progress(total=method.generations - (resumed_from or 0), desc="evo") as bar:
            state = evo.evolve(method, env.db, start, pool, seqs.shape[0], ctx.seed, env.db_key,
                               lambda m, step: ctx.log_metrics(m, step=step), save, resume=resume, progress=bar,
                               cap=env.budget_cost)
    seconds = time.perf_counter() - started
    return state.parent, {"generations": state.generation, "evaluations": state.evaluations,
                          "resumed_from": resumed_from, "seconds": seconds, "init": method.init,
                          "history": state.history, **extra}


@allocator("bisect")
def allocate_bisect(method: BisectMethod, env: SearchEnv) -> tuple[Allocation, dict[str, Any]]:
    """Order layers by input-trace sensitivity of the drop, then bisect on measured calibration perplexity."""
    from .evaluators.perplexity import chunk_tokens, token_perplexity, tokenize_joined

    high, low = env.db.level_index(method.high_bits), env.db.level_index(method.low_bits)
    losses = sensitivity.from_traces(env.db, sensitivity.input_traces(env.db))
    order = sorted(range(len(env.db.layers)), key=lambda i: losses[i][low] - losses[i][high])
    chunks = chunk_tokens(tokenize_joined(env.tokenizer, env.calibration_texts),
                          env.spec.report.test_seq_len, method.eval_sequences)
    stitched = AllocationModel(copy.deepcopy(env.model), env.db)
    reference_ppl = token_perplexity(stitched.apply(None), chunks)
    limit = reference_ppl * (1 + env.spec.budget.max_ppl_increase_pct / 100)
    measured: list[float] = []

    def within(allocation: Allocation) -> bool:
        ppl = token_perplexity(stitched.apply(allocation), chunks)
        measured.append(ppl)
        env.ctx.log_metrics({"bisect/calibration_ppl": ppl}, step=len(measured))
        return ppl <= limit

    allocation, probes = bisect_drop(order, high, low, len(env.db.layers), within)
    for probe, ppl in zip(probes, measured):
        probe["calibration_ppl"] = ppl
    met = any(p["within"] and p["dropped_layers"] == sum(a == low for a in allocation) for p in probes)
    if not met:
        log.warning("bisect: even every layer at %d bits misses the quality budget", method.high_bits)
    return allocation, {"reference_calibration_ppl": reference_ppl, "limit_ppl": limit, "probes": probes,
                        "met": met}


def fill_greedily(allocation: Allocation, costs: list[list[int]], cap: int, rng: random.Random) -> Allocation:
    """Raise random layers one level at a time while the total stays within `cap`."""
    allocation = list(allocation)
    total = knapsack.allocation_cost(costs, allocation)
    while True:
        up = [i for i, lv in enumerate(allocation) if lv + 1 < len(costs[i])
              and total - costs[i][lv] + costs[i][lv + 1] <= cap]
        if not up:
            return allocation
        i = rng.choice(up)
        total += costs[i][allocation[i] + 1] - costs[i][allocation[i]]
        allocation[i] += 1


def uniform_allocation(costs: list[list[int]], cap: int, spec: SearchSpec) -> Allocation:
    """Every layer at the widest level whose total cost fits `cap` (the lowest level if none does); with several
    group sizes, the widest width and within it the smallest group that fits."""
    n_levels = len(spec.levels.grid())
    best = 0
    for lv in range(n_levels):
        if sum(c[lv] for c in costs) <= cap:
            best = lv
    return [best] * len(costs)


# -- measuring and writing ----------------------------------------------------------------------------
@dataclass
class Baseline:
    """A quantized model named in `inputs.baselines`, loaded for the report."""

    role: str  # baselines.I
    ref: str  # the spec's reference (a digest once submitted)
    model: nn.Module
    effective_bits_per_weight: float  # over the searched layers, as the level database counts them
    description: dict[str, Any]


def load_baselines(spec: SearchSpec, ctx: RunContext, db: LevelDB, model_digest: str) -> list[Baseline]:
    """The spec's baseline models; DataError when one is not a bitsmith quantization of the searched model."""
    from bitsmith.kernels.qlinear import effective_bits_per_weight

    baselines = []
    for i, ref in enumerate(spec.inputs.baselines):
        art = ctx.input(f"baselines.{i}")
        where = f"inputs.baselines[{i}]"
        if not quant_format.is_bitsmith_quantized(art.path):
            raise DataError(f"{where}: {art.path} is not a bitsmith quantized model; expected a `quantize` output")
        base = art.metadata.get("base_model_digest")
        if base != model_digest:
            raise DataError(f"{where}: quantized from model {base}; expected a quantization of inputs.model "
                            f"({model_digest})")
        model = quant_format.load_quantized_model(art.path)
        try:
            modules = [model.get_submodule(name) for name in db.names]
        except AttributeError as e:
            raise DataError(f"{where}: {e}; expected the searched model's architecture") from None
        described = {k: art.metadata.get(k) for k in ("method", "bits", "group_size", "symmetric")}
        baselines.append(Baseline(f"baselines.{i}", ref, model, effective_bits_per_weight(modules), described))
    return baselines


def measure(env: SearchEnv, results: dict[str, Allocation], built: dict[str, nn.Module] | None = None,
            baselines: list[Baseline] | None = None) -> list[dict[str, Any]]:
    """One row per allocation: bits, size and held-out (test split) perplexity and KL to the model.

    Order: the allocations of `results`, unquantized, the baselines, then uniform at every width. An
    allocation in `built` is measured on that model (the uniform row built as a `quantize` job) instead of
    the level database's layers; its stored size is the same (same widths, groups and grid).
    """
    from bitsmith.kernels.qlinear import dense_weight_cache

    from .data.datasets import read_texts
    from .evaluators.kl import compute_reference_logits
    from .evaluators.perplexity import chunk_tokens, tokenize_joined

    cfg, built, baselines = env.spec.report, built or {}, baselines or []
    test_texts = read_texts(env.ctx.input("calibration").path, "test")
    ids = tokenize_joined(env.tokenizer, test_texts)
    if ids.numel() < cfg.test_seq_len:
        raise DataError(f"inputs.calibration: test split has {ids.numel()} tokens, fewer than "
                        f"report.test_seq_len={cfg.test_seq_len}; expected a longer test split")
    chunks = chunk_tokens(ids, cfg.test_seq_len, cfg.test_max_chunks)
    predicted = chunks.shape[1] - 1

    def scored(model: nn.Module) -> dict[str, Any]:  # one forward: per-chunk NLLs (the bootstrap's) and the KL
        nll, kl = score_chunks(model, chunks, reference)
        return {"test_token_ppl": math.exp(sum(nll) / (len(nll) * predicted)), "test_chunk_nll": nll, "test_kl": kl}

    stitched = AllocationModel(copy.deepcopy(env.model), env.db)
    n_layers = len(env.db.layers)
    pareto = list(range(len(env.db.grid))) if cfg.pareto_uniform_levels else []
    total = 1 + len(results) + len(baselines) + len(pareto)
    with env.ctx.progress(total=total, desc="report: test split") as bar:
        reference = compute_reference_logits(stitched.apply(None), chunks)
        unquantized = {"method": "unquantized", "avg_bits": None, "effective_bits_per_weight": None,
                       "size_bytes": None, **scored(stitched.model)}
        bar.update(1, row="unquantized")

        def row(name: str, model: nn.Module, allocation: Allocation, **extra: Any) -> dict[str, Any]:
            out = {"method": name, "avg_bits": env.db.nominal_bits(allocation),
                   "effective_bits_per_weight": env.db.effective_bits(allocation),
                   "size_bytes": math.ceil(env.db.storage_bits(allocation) / 8), **scored(model), **extra}
            bar.update(1, row=name)
            return out

        rows = [row(name, built[name], allocation, built_as="quantize") if name in built
                else row(name, stitched.apply(allocation), allocation) for name, allocation in results.items()]
        rows.append(unquantized)
        for b in baselines:
            with dense_weight_cache(b.model):
                scores = scored(b.model)
            rows.append({"method": b.role, "ref": b.ref, "avg_bits": b.description.get("bits"),
                         "effective_bits_per_weight": b.effective_bits_per_weight, "size_bytes": None,
                         **scores, "baseline": b.description})
            bar.update(1, row=b.role)
        for lv in pareto:  # the pareto plot's reference curve: uniform at every level of the database
            rows.append(row(f"uniform-{env.db.level_name(lv)}", stitched.apply([lv] * n_layers), [lv] * n_layers))
    add_uniform_differences(rows, predicted, cfg.bootstrap_resamples, env.ctx.seed)
    return rows


@torch.inference_mode()
def score_chunks(model: nn.Module, chunks: Tensor, reference: dict[str, Tensor], batch_size: int = 8,
                 ) -> tuple[list[float], float]:
    """(summed next-token NLL of each chunk, mean per-token KL to `reference`) from one forward per batch."""
    import torch.nn.functional as F

    from .evaluators.kl import token_kl
    from .evaluators.loglik import forward_logits

    nll: list[float] = []
    kl_sum, kl_count = 0.0, 0
    for start in range(0, chunks.shape[0], batch_size):
        batch = chunks[start:start + batch_size]
        log_q = F.log_softmax(forward_logits(model, batch).float(), dim=-1)
        picked = log_q[:, :-1].gather(-1, batch[:, 1:, None])[..., 0]
        nll += (-picked.double().sum(dim=1)).tolist()
        kl = token_kl({k: v[start:start + batch_size] for k, v in reference.items() if k != "input_ids"}, log_q)
        kl_sum += kl.double().sum().item()
        kl_count += kl.numel()
    return nll, kl_sum / kl_count


def add_uniform_differences(rows: list[dict[str, Any]], predicted_per_chunk: int, resamples: int,
                            seed: int) -> None:
    """Each row's `vs_uniform`: its test perplexity minus the uniform row's, with a paired bootstrap interval
    over the test chunks (the rows were scored on the same chunks)."""
    uniform = next((r for r in rows if r["method"] == "uniform"), None)
    if uniform is None:
        return
    tokens = [predicted_per_chunk] * len(uniform["test_chunk_nll"])
    for r in rows:
        if r is not uniform:
            r["vs_uniform"] = bootstrap.paired_ppl_difference(r["test_chunk_nll"], uniform["test_chunk_nll"], tokens,
                                                              resamples, seed=seed)


def best_baseline(rows: list[dict[str, Any]], effective_bits: float) -> dict[str, Any] | None:
    """The baseline row with the lowest test perplexity at or below `effective_bits` (None if there is none)."""
    fits = [r for r in rows if r["method"].startswith("baselines.")
            and r["effective_bits_per_weight"] <= effective_bits + 1e-9]
    return min(fits, key=lambda r: r["test_token_ppl"], default=None)


def write_outputs(env: SearchEnv, allocation: Allocation, rows: list[dict[str, Any]], details: dict[str, Any],
                  model_digest: str, seconds: float, extra: dict[str, Any] | None = None) -> WorkerOutputs:
    from .allocation import plots

    spec, ctx, db = env.spec, env.ctx, env.db
    chosen = rows[0]
    uniform = next(r for r in rows if r["method"] == "uniform")
    layers = db.levels_of(allocation)
    group_size = spec.levels.group_size if db.single_group else None  # per module in `modules` when mixed
    meta = {"kind": "allocation", "method": spec.method.type, "avg_bits": chosen["avg_bits"],
            "effective_bits_per_weight": chosen["effective_bits_per_weight"], "size_bytes": chosen["size_bytes"],
            "budget": spec.budget.model_dump(mode="json"),
            "levels": list(db.bits) if db.single_group else [db.level_name(i) for i in range(len(db.grid))],
            "level_db": env.db_key,
            "base_model_digest": model_digest, "n_layers": len(layers)}
    alloc_dir = ctx.output_path("allocation")
    alloc_dir.mkdir(parents=True, exist_ok=True)
    (alloc_dir / "allocation.json").write_text(json.dumps({"layers": layers, **meta}, indent=2) + "\n")
    write_artifact_meta(alloc_dir, meta)

    model = stitch_model(env, allocation)
    modules = {name: quant_format.module_entry(model.get_submodule(name), transposed=layer.transposed)
               for name, layer in zip(db.names, db.layers)}
    quant_config = {"method": db.method, "bits": None, "mixed_precision": True, "avg_bits": chosen["avg_bits"],
                    "group_size": group_size, "symmetric": db.symmetric, "mse_clip": spec.levels.mse_clip,
                    "scale_dtype": "float16", "modules": modules}
    model_meta = {"kind": "quantized-model", "format": quant_format.FORMAT, "method": f"search-{spec.method.type}",
                  "bits": None, "avg_bits": chosen["avg_bits"], "group_size": group_size,
                  "symmetric": db.symmetric, "effective_bits_per_weight": chosen["effective_bits_per_weight"],
                  "base_model_digest": model_digest}
    model_dir = quant_format.save_quantized_model(model, ctx.output_path("model"), quant_config,
                                                  source_dir=env.model_dir, artifact_meta=model_meta)

    best = best_baseline(rows, chosen["effective_bits_per_weight"])
    summary = {"method": spec.method.type, "budget": spec.budget.model_dump(mode="json"), "seconds": seconds,
               "level_db": env.db_key, "level_settings": spec.levels.model_dump(mode="json"), **(extra or {}),
               "vs_uniform_pct": 100 * (chosen["test_token_ppl"] / uniform["test_token_ppl"] - 1),
               "vs_uniform": {r["method"]: {"effective_bits_per_weight": r["effective_bits_per_weight"],
                                            "test_token_ppl": r["test_token_ppl"], **r["vs_uniform"]}
                              for r in rows if "vs_uniform" in r},
               "best_baseline": None if best is None else {
                   "role": best["method"], "ref": best["ref"], "test_token_ppl": best["test_token_ppl"],
                   "effective_bits_per_weight": best["effective_bits_per_weight"],
                   "vs_best_baseline_pct": 100 * (chosen["test_token_ppl"] / best["test_token_ppl"] - 1)}}
    report = {"summary": summary,
              "table": rows, "details": details, "allocation": layers,
              "levels": [{"name": layer.name, "shape": list(layer.shape),
                          "levels": [vars(lv) for lv in layer.levels]} for layer in db.layers]}
    report_path = ctx.output_path("report.json")
    report_path.write_text(json.dumps(report, indent=2, default=float) + "\n")
    artifacts = {
        "allocation": OutputArtifact(alloc_dir, kind="allocation", metadata=meta),
        "model": OutputArtifact(model_dir, kind="quantized-model", metadata=model_meta),
        "report": OutputArtifact(report_path, kind="report", metadata={"method": spec.method.type}),
    }
    plots = plots.write_plots(ctx, db, allocation, rows)
    artifacts.update(plots)

    metrics = {"avg_bits": chosen["avg_bits"], "effective_bits_per_weight": chosen["effective_bits_per_weight"],
               "size_bytes": float(chosen["size_bytes"]), "test/token_ppl": chosen["test_token_ppl"],
               "kl": chosen["test_kl"], "uniform/avg_bits": uniform["avg_bits"],
               "uniform/test/token_ppl": uniform["test_token_ppl"], "uniform/kl": uniform["test_kl"],
               "seconds": seconds}
    for row in rows:
        if row["method"] not in (chosen["method"], "uniform") and row["avg_bits"] is not None \
                and not row["method"].startswith("baselines."):
            metrics[f"{row['method']}/test/token_ppl"] = row["test_token_ppl"]
            metrics[f"{row['method']}/kl"] = row["test_kl"]
        if row["method"] == "unquantized":
            metrics["unquantized/test/token_ppl"] = row["test_token_ppl"]
    if best is not None:
        metrics["best_baseline/test/token_ppl"] = best["test_token_ppl"]
    if "evaluations" in details:
        metrics["evaluations"] = float(details["evaluations"])
    ctx.log_metrics(metrics)
    ctx.flush_metrics()
    return WorkerOutputs(artifacts=artifacts, metrics=metrics)


def stitch_model(env: SearchEnv, allocation: Allocation) -> nn.Module:
    """A copy of the model whose searched layers are the allocation's packed `QuantizedLinear`s."""
    from .allocation.levels import LevelWeights

    model = copy.deepcopy(env.model)
    weights = LevelWeights(env.db)
    for i, (layer, lv) in enumerate(zip(env.db.layers, allocation)):
        module = model.get_submodule(layer.name)
        bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
        quant_format.replace_module(model, layer.name, weights.packed_layer(i, lv, bias))
    return model

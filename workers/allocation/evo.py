"""EvoPress (Sieberling et al., 2024, Alg. 1): (1+λ) evolutionary search over per-layer levels.

Each generation the parent makes λ children by level-switch mutation (one layer of a group of
equal-size layers goes up a level, another of the same group goes down by the same number of bits,
so the budget holds exactly; with several group sizes, by a repair that keeps the total within the
parent's); multi-step selection scores them on fresh random calibration sequences,
keeping fewer survivors on more tokens at each stage; the parent re-enters at the last stage and the
best candidate becomes the next parent. Fitness is KL(reference || candidate) per token.
"""
from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bitsmith.platform.errors import DataError
from bitsmith.platform.specs.search import EvoMethod

from .levels import AllocationModel, LevelDB, load_level_db

log = logging.getLogger(__name__)
STATE_FILE = "evo_state.json"


# -- mutation -------------------------------------------------------------------------------------
def equal_size_groups(db: LevelDB) -> list[list[int]]:
    """Layers whose stored size is the same at every level (so swapping levels between them keeps
    both the nominal and the stored budget); groups of one layer cannot mutate and are left out."""
    groups: dict[tuple, list[int]] = {}
    for i, layer in enumerate(db.layers):
        key = (layer.numel, tuple((lv.bits, lv.storage_bits) for lv in layer.levels))
        groups.setdefault(key, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def level_switch(allocation: list[int], groups: list[list[int]], costs: list[list[int]],
                 rng: random.Random, tries: int = 100, repair: bool = False, cap: int | None = None,
                 ) -> list[int] | None:
    """One switch: layer u of a group up one level, layer d of the same group down by the same stored bits
    (EvoPress's switch; with one group size the steps between widths are equal, so one usually exists).

    `repair` (or when no exact switch is found in `tries`): u goes up one level, then random other layers of
    its group go down one level at a time until the total is within `cap` (default: the parent's total), then
    random layers of the group that still fit go up. With several group sizes a step rarely has an exact
    counterpart, so this is how an allocation moves between them."""
    total = sum(c[lv] for c, lv in zip(costs, allocation)) if cap is None else cap
    candidate = None
    for _ in range(tries):
        group = rng.choice(groups)
        ups = [i for i in group if allocation[i] + 1 < len(costs[i])]
        if not ups:
            continue
        u = rng.choice(ups)
        candidate = (group, u)
        if repair:
            break
        step = costs[u][allocation[u] + 1] - costs[u][allocation[u]]
        downs = [i for i in group if i != u and allocation[i] > 0
                 and costs[i][allocation[i]] - costs[i][allocation[i] - 1] == step]
        if downs:
            child = list(allocation)
            child[u] += 1
            child[rng.choice(downs)] -= 1
            return child
    if candidate is None:
        return None
    group, u = candidate
    child = list(allocation)
    child[u] += 1
    return _repair(child, group, u, costs, total, rng)


def _repair(child: list[int], group: list[int], raised: int, costs: list[list[int]], cap: int,
            rng: random.Random) -> list[int] | None:
    """Lower random other layers of `group` one level at a time until the total is within `cap`, then raise
    random layers of the group (not back the lowered ones) while they fit; None when it cannot get within."""
    total = sum(c[lv] for c, lv in zip(costs, child))
    lowered: set[int] = set()
    while total > cap:
        downs = [i for i in group if i != raised and child[i] > 0]
        if not downs:
            return None
        d = rng.choice(downs)
        total -= costs[d][child[d]] - costs[d][child[d] - 1]
        child[d] -= 1
        lowered.add(d)
    while True:
        fits = [i for i in group if i not in lowered and child[i] + 1 < len(costs[i])
                and total + costs[i][child[i] + 1] - costs[i][child[i]] <= cap]
        if not fits:
            return child
        i = rng.choice(fits)
        total += costs[i][child[i] + 1] - costs[i][child[i]]
        child[i] += 1


def mutate(allocation: list[int], groups: list[list[int]], costs: list[list[int]], rng: random.Random,
           max_switches: int, repair_rate: float = 0.0, cap: int | None = None) -> list[int]:
    """A child with 1..max_switches level switches (EvoPress's mutation), each a repair (within `cap`, default
    the parent's total) with probability `repair_rate`; equal to the parent only if no switch is possible."""
    child = list(allocation)
    for _ in range(rng.randint(1, max_switches)):
        switched = level_switch(child, groups, costs, rng, repair=repair_rate > 0 and rng.random() < repair_rate,
                                cap=cap)
        if switched is None:
            break
        child = switched
    return child


# -- fitness --------------------------------------------------------------------------------------
class FitnessActor:
    """Holds one model copy and the reference log-probs of the fitness sequences; scores allocations.

    Runs as a Ray actor under the ray executor (one process each), in-process under the local one.
    """

    def __init__(self, model_dir: str, level_db_dir: str, reference_file: str, threads: int = 1,
                 batch_size: int = 8):
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True,
                                                     trust_remote_code=False, use_safetensors=True).eval()
        self.stitched = AllocationModel(model, load_level_db(level_db_dir))
        self.reference = load_file(reference_file)
        self.batch_size = batch_size

    def kl(self, item: dict[str, Any]) -> float:
        """Mean per-token KL of allocation `item["levels"]` on reference sequences `item["sequences"]`."""
        from bitsmith.workers.evaluators.kl import kl_to_reference

        model = self.stitched.apply(item["levels"])
        ids = torch.tensor(item["sequences"], dtype=torch.long)
        part = {k: v.index_select(0, ids) for k, v in self.reference.items()}
        return kl_to_reference(model, None, part, self.batch_size)

    def ping(self) -> bool:
        return True


# -- the search loop --------------------------------------------------------------------------------
@dataclass
class EvoState:
    generation: int
    parent: list[int]
    evaluations: int
    rng_state: Any
    history: list[dict[str, float]] = field(default_factory=list)

    def to_json(self, db_key: str) -> dict[str, Any]:
        return {"generation": self.generation, "parent": self.parent, "evaluations": self.evaluations,
                "rng_state": _jsonable(self.rng_state), "history": self.history, "level_db": db_key}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "EvoState":
        version, internal, gauss = data["rng_state"]
        return cls(generation=data["generation"], parent=list(data["parent"]), evaluations=data["evaluations"],
                   rng_state=(version, tuple(internal), gauss), history=list(data["history"]))


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def load_state(checkpoint: Path, db_key: str, n_layers: int) -> EvoState:
    """The population state of a checkpoint directory; DataError if it belongs to another level database."""
    data = json.loads((Path(checkpoint) / STATE_FILE).read_text())
    if data.get("level_db") != db_key or len(data["parent"]) != n_layers:
        raise DataError(f"{checkpoint}: evo checkpoint of another level database; expected one written by a "
                        "search with the same model, calibration data and levels")
    return EvoState.from_json(data)


def evolve(method: EvoMethod, db: LevelDB, start: list[int], pool: Any, n_sequences: int, seed: int,
           db_key: str, log_metrics: Callable[[dict[str, float], int], None],
           save_checkpoint: Callable[[dict[str, Any], int], None], resume: EvoState | None = None,
           progress: Any = None, cap: int | None = None) -> EvoState:
    """Run `method.generations` generations from `start` (or from `resume`); returns the final state.

    `pool.map("kl", items)` scores candidates; `save_checkpoint(state_json, generation)` is called every
    `method.checkpoint_every` generations. `cap`: the budget in stored bits (default: the start's), which
    repairs keep children within.
    """
    groups = equal_size_groups(db)
    costs = [[lv.storage_bits for lv in layer.levels] for layer in db.layers]
    repair_rate = 0.0 if db.single_group else 0.5  # exact switches between group sizes are rare
    cap = sum(c[lv] for c, lv in zip(costs, start)) if cap is None else cap
    rng = random.Random(seed)
    state = resume or EvoState(generation=0, parent=list(start), evaluations=0, rng_state=rng.getstate())
    rng.setstate(state.rng_state)
    if not groups:
        log.warning("evo: no two layers share a size, so no level switch keeps the budget; keeping the start")
    while state.generation < method.generations and groups:
        children = [mutate(state.parent, groups, costs, rng, method.max_switches, repair_rate, cap)
                    for _ in range(method.offspring)]
        candidates = children
        best, best_kl = state.parent, float("nan")
        for s, stage in enumerate(method.stages):
            last = s == len(method.stages) - 1
            if last:
                candidates = candidates + [state.parent]  # the parent re-enters at the last stage
            elif stage.survivors >= len(candidates):
                continue
            sequences = rng.sample(range(n_sequences), stage.sequences)  # fresh tokens every stage
            scores = pool.map("kl", [{"levels": c, "sequences": sequences} for c in candidates])
            state.evaluations += len(candidates)
            order = sorted(range(len(candidates)), key=lambda i: scores[i])
            candidates = [candidates[i] for i in order[:stage.survivors]]
            if last:
                best, best_kl = candidates[0], scores[order[0]]
        state.parent = best
        state.generation += 1
        state.rng_state = rng.getstate()
        record = {"generation": state.generation, "kl": best_kl, "evaluations": state.evaluations}
        state.history.append(record)
        log_metrics({"evo/kl": best_kl, "evo/evaluations": state.evaluations}, state.generation)
        if progress is not None:
            progress.update(1, kl=f"{best_kl:.4f}")
        if state.generation % method.checkpoint_every == 0 and state.generation < method.generations:
            save_checkpoint(state.to_json(db_key), state.generation)
    return state

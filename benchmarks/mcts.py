"""Search-core speed: simulations per second with a trivial model, against LightZero and mctx.

    python benchmarks/mcts.py                 # full grid, table
    python benchmarks/mcts.py --quick --json  # smaller grid, JSON line last

A "trivial model" returns precomputed arrays, so the figures measure the tree
work and the Python/C++ boundary crossing, not a network. Every search runs
the same way for every implementation: roots prepared, S simulation steps for
B trees (one model call per step), root visit counts read back. Ours and
LightZero use Dirichlet root noise (LightZero's noise arrays are drawn outside
the timed region, ours inside the core).

Peers, measured in the same run on the same machine:
* LightZero's compiled MuZero tree (``lzero.mcts.ctree.ctree_muzero.mz_tree``),
  driven the way ``lzero/mcts/tree_search/mcts_ctree.py`` drives it (Python
  lists across the boundary, a latent gather per step). LightZero's pins
  (gymnasium 0.28, torch<=2.12, ...) clash with this project's, so it is run in
  a separate interpreter: ``--lightzero-python`` (default: $ARBOR_LIGHTZERO_PYTHON,
  else /tmp/lzvenv/bin/python, else this interpreter).
* mctx ``muzero_policy`` and ``gumbel_muzero_policy`` on CPU, jitted, timed
  after compilation (``pip install jax jaxlib mctx``).

Ratios are ours / peer (larger is better for us).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

if __name__ == "__main__":  # run as a script from anywhere: import the repository's planners
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from planners import mcts  # noqa: E402

GRID_B = (1, 16, 64, 256)
GRID_S = (16, 50, 200)
GRID_A = (9, 18)
DISCOUNT = 0.997


def timeit(run: Callable[[], None], min_time: float, min_reps: int = 5) -> float:
    """Best (minimum) seconds per call of run() after one warm-up call, as Python's timeit advises:
    the minimum is the figure least disturbed by other processes on a shared machine."""
    run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return float(np.min(times))


# ---------------------------------------------------------------- ours
def bench_ours(B: int, S: int, A: int, min_time: float, algorithm: str = "puct", threads: int = 1,
               leaves_per_step: int = 1) -> float:
    cfg = mcts.SearchConfig(algorithm=algorithm, num_simulations=S, discount=DISCOUNT, num_threads=threads,
                            leaves_per_step=leaves_per_step,
                            dirichlet_fraction=0.25 if algorithm == "puct" else 0.0)
    forest = mcts.Forest(B, A, cfg)
    rng = np.random.default_rng(0)
    # Every leaf of tree b gets tree b's value and logits, whatever its slot in the step:
    # a model whose output depended on the slot would give a tree with several leaves
    # per step a different shape (at B = 1, S = 200: mean depth 11.8 instead of 4.1 with
    # two leaves) and time a different search.
    k = leaves_per_step
    output = mcts.ModelOutput(np.zeros(B * k, np.float32), np.repeat(rng.uniform(-1, 1, B).astype(np.float32), k),
                              np.repeat(rng.normal(size=(B, A)).astype(np.float32), k, axis=0))
    return B * S / time_search(forest, rng.normal(size=(B, A)).astype(np.float32), lambda leaves: output, min_time)


def time_search(forest: "mcts.Forest", root_logits: np.ndarray, model_fn: Callable, min_time: float) -> float:
    """Seconds per whole search of ``forest`` (roots set, simulations run, root statistics read)."""
    root_value = np.zeros(len(root_logits), np.float32)

    def run() -> None:
        forest.set_roots(root_logits, root_value)
        forest.run(model_fn)
        forest.results()

    return timeit(run, min_time)


def bench_ours_network(S: int, A: int, min_time: float, leaves_per_step: int, width: int = 256) -> float:
    """Simulations per second of one tree (B = 1) whose model is a small torch MLP
    (latent 64 -> width -> width -> A logits + value, one thread), evaluated on every
    step's leaves in one call: the case leaf batching is for."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, A + 1))
    cfg = mcts.SearchConfig(num_simulations=S, discount=DISCOUNT, leaves_per_step=leaves_per_step)
    forest = mcts.Forest(1, A, cfg)
    latent = torch.randn(forest.max_nodes, 64)

    @torch.inference_mode()
    def model_fn(leaves: mcts.LeafBatch) -> mcts.ModelOutput:
        out = net(latent[torch.from_numpy(leaves.parent_node.astype(np.int64))]).numpy()
        return mcts.ModelOutput(np.zeros(len(out), np.float32), np.tanh(out[:, 0]), out[:, 1:])

    return S / time_search(forest, np.zeros((1, A), np.float32), model_fn, min_time)


# ---------------------------------------------------------------- mctx
def bench_mctx(B: int, S: int, A: int, min_time: float, policy: str) -> Optional[float]:
    try:
        import jax
        import jax.numpy as jnp
        import mctx
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    root_logits = jnp.asarray(rng.normal(size=(B, A)), jnp.float32)
    values = jnp.asarray(rng.uniform(-1, 1, B), jnp.float32)
    step_logits = jnp.asarray(rng.normal(size=(B, A)), jnp.float32)

    def recurrent_fn(params, rng_key, action, embedding):
        out = mctx.RecurrentFnOutput(reward=jnp.zeros(B, jnp.float32), discount=jnp.full(B, DISCOUNT, jnp.float32),
                                     prior_logits=step_logits, value=values)
        return out, embedding

    root = mctx.RootFnOutput(prior_logits=root_logits, value=jnp.zeros(B, jnp.float32),
                             embedding=jnp.zeros((B, 1), jnp.float32))
    if policy == "muzero":
        fn = jax.jit(lambda key: mctx.muzero_policy((), key, root, recurrent_fn, S, dirichlet_fraction=0.25).action_weights)
    else:
        fn = jax.jit(lambda key: mctx.gumbel_muzero_policy((), key, root, recurrent_fn, S).action_weights)
    key = jax.random.PRNGKey(0)
    fn(key).block_until_ready()  # compile
    return B * S / timeit(lambda: fn(key).block_until_ready(), min_time)


# ---------------------------------------------------------------- LightZero (separate interpreter)
LIGHTZERO_DRIVER = r'''
import importlib.util, json, sys, time
import numpy as np
try:
    from lzero.mcts.ctree.ctree_muzero import mz_tree as ctree
except Exception:  # lzero/__init__ pulls torch & co; the compiled tree itself needs only numpy
    import glob, os
    spec = importlib.util.find_spec("lzero")
    root = os.path.dirname(spec.origin)
    so = glob.glob(os.path.join(root, "mcts", "ctree", "ctree_muzero", "mz_tree*.so"))[0]
    s = importlib.util.spec_from_file_location("mz_tree", so)
    ctree = importlib.util.module_from_spec(s)
    s.loader.exec_module(ctree)

def search(B, S, A, noises, root_logits, latent_roots, reward, value, logits, latent_out):
    legal_actions = [list(range(A)) for _ in range(B)]
    to_play = [-1] * B
    roots = ctree.Roots(B, legal_actions)
    roots.prepare(0.25, noises, [0.0] * B, root_logits, to_play)
    min_max_stats_lst = ctree.MinMaxStatsList(B)
    min_max_stats_lst.set_delta(0.01)
    latent_state_batch_in_search_path = [latent_roots]
    for simulation_index in range(S):
        results = ctree.ResultsWrapper(num=B)
        ix, iy, last_actions, virtual_to_play = ctree.batch_traverse(
            roots, 19652, 1.25, 0.997, min_max_stats_lst, results, to_play)
        latent_states = [latent_state_batch_in_search_path[x][y] for x, y in zip(ix, iy)]
        latent_states = np.asarray(latent_states)
        last_actions = np.asarray(last_actions)
        latent_state_batch_in_search_path.append(latent_out)  # trivial model: precomputed outputs
        reward_batch = reward.reshape(-1).tolist()
        value_batch = value.reshape(-1).tolist()
        policy_logits_batch = logits.tolist()
        ctree.batch_backpropagate(simulation_index + 1, 0.997, reward_batch, value_batch, policy_logits_batch,
                                  min_max_stats_lst, results, virtual_to_play)
    roots.get_distributions()
    roots.get_values()

def bench(B, S, A, min_time):
    rng = np.random.default_rng(0)
    noises = [rng.dirichlet([0.3] * A).astype(np.float32).tolist() for _ in range(B)]
    root_logits = rng.normal(size=(B, A)).astype(np.float32).tolist()
    latent_roots = np.zeros((B, 1), np.float32)
    reward = np.zeros(B, np.float32)
    value = rng.uniform(-1, 1, B).astype(np.float32)
    logits = rng.normal(size=(B, A)).astype(np.float32)
    latent_out = np.zeros((B, 1), np.float32)
    run = lambda: search(B, S, A, noises, root_logits, latent_roots, reward, value, logits, latent_out)
    run()
    times = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter(); run(); times.append(time.perf_counter() - t0)
        if len(times) >= 200: break
    return B * S / float(np.min(times))

# one request per line, "B S A min_time", answered with one line: simulations per second
for line in sys.stdin:
    B, S, A, min_time = line.split()
    print(bench(int(B), int(S), int(A), float(min_time)), flush=True)
'''


def lightzero_python(explicit: Optional[str]) -> Optional[str]:
    candidates = [explicit, os.environ.get("ARBOR_LIGHTZERO_PYTHON"), "/tmp/lzvenv/bin/python", sys.executable]
    for exe in candidates:
        if not exe or not Path(exe).exists():
            continue
        probe = subprocess.run([exe, "-c", "import importlib.util,sys; sys.exit(importlib.util.find_spec('lzero') is None)"],
                               capture_output=True)
        if probe.returncode == 0:
            return exe
    return None


class LightZeroPeer:
    """LightZero's tree in its own interpreter, measured on request so that its figures are
    taken right next to ours (the machine's load changes over a run)."""

    def __init__(self, exe: str) -> None:
        self.proc = subprocess.Popen([exe, "-c", LIGHTZERO_DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def measure(self, B: int, S: int, A: int, min_time: float) -> Optional[float]:
        if self.proc.poll() is not None:
            return None
        self.proc.stdin.write(f"{B} {S} {A} {min_time}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            print(f"LightZero run failed:\n{self.proc.stderr.read()[-2000:]}", file=sys.stderr)
            return None
        return float(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# ---------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--quick", action="store_true", help="B in {1, 64, 256}, S in {50, 200}, A = 18 only")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per figure")
    parser.add_argument("--no-mctx", action="store_true")
    parser.add_argument("--no-lightzero", action="store_true")
    parser.add_argument("--lightzero-python", default=None, help="interpreter that can import lzero")
    args = parser.parse_args()

    grid_b, grid_s, grid_a = ((1, 64, 256), (50, 200), (18,)) if args.quick else (GRID_B, GRID_S, GRID_A)
    configs = [(B, S, A) for A in grid_a for S in grid_s for B in grid_b]
    if (64, 50, 18) not in configs:
        configs.append((64, 50, 18))
    figures: dict[str, float] = {}
    ratios: dict[str, float] = {}

    lz_exe = None if args.no_lightzero else lightzero_python(args.lightzero_python)
    peer = LightZeroPeer(lz_exe) if lz_exe else None

    rows = []
    for B, S, A in configs:
        tag = f"b{B}_s{S}_a{A}"
        ours = bench_ours(B, S, A, args.min_time)
        ours_g = bench_ours(B, S, A, args.min_time, algorithm="gumbel")
        mz = None if args.no_mctx else bench_mctx(B, S, A, args.min_time, "muzero")
        mg = None if args.no_mctx else bench_mctx(B, S, A, args.min_time, "gumbel")
        lz = peer.measure(B, S, A, args.min_time) if peer else None
        figures[f"ours_puct_{tag}"] = ours
        figures[f"ours_gumbel_{tag}"] = ours_g
        if lz:
            figures[f"lightzero_{tag}"] = lz
            ratios[f"ours/lightzero_{tag}"] = ours / lz
        if mz:
            figures[f"mctx_muzero_{tag}"] = mz
            ratios[f"ours/mctx_muzero_{tag}"] = ours / mz
        if mg:
            figures[f"mctx_gumbel_{tag}"] = mg
            ratios[f"ours_gumbel/mctx_gumbel_{tag}"] = ours_g / mg
        rows.append((B, S, A, ours, ours_g, lz, mz, mg))

    def fmt(x: Optional[float]) -> str:
        return f"{x / 1e3:10.0f}k" if x else "       n/a "

    def rat(x: Optional[float], y: Optional[float]) -> str:
        return f"{x / y:7.1f}x" if x and y else "    n/a "

    print("Simulations per second (thousands), trivial model, one search = B trees x S simulations")
    print(f"{'B':>4} {'S':>4} {'A':>3} | {'ours pUCT':>11} {'LightZero':>11} {'mctx muzero':>11} | "
          f"{'vs LZ':>8} {'vs mctx':>8} | {'ours Gumbel':>11} {'mctx gumbel':>11} {'vs mctx':>8}")
    for B, S, A, ours, ours_g, lz, mz, mg in rows:
        print(f"{B:>4} {S:>4} {A:>3} | {fmt(ours)} {fmt(lz)} {fmt(mz)} | {rat(ours, lz)} {rat(ours, mz)} | "
              f"{fmt(ours_g)} {fmt(mg)} {rat(ours_g, mg)}")

    # threads, leaf batching, growth with the simulation count
    print("\nThreads over trees (pUCT, S=50, A=18)")
    for B in (64, 256):
        one = bench_ours(B, 50, 18, args.min_time, threads=1)
        two = bench_ours(B, 50, 18, args.min_time, threads=2)
        figures[f"ours_threads1_b{B}_s50_a18"], figures[f"ours_threads2_b{B}_s50_a18"] = one, two
        ratios[f"threads2/threads1_b{B}_s50_a18"] = two / one
        line = f"  B={B:<4} 1 thread {fmt(one)}  2 threads {fmt(two)}  ratio {two / one:.2f}"
        lz = figures.get(f"lightzero_b{B}_s50_a18")
        if lz:   # LightZero's tree runs its batch on one thread; ours spreads the trees over both cores
            ratios[f"ours_threads2/lightzero_b{B}_s50_a18"] = two / lz
            line += f"  (2 threads vs LightZero: {two / lz:.1f}x)"
        print(line)

    print("\nLeaf batching in one tree (B=1, S=200, A=18)")
    k1 = bench_ours(1, 200, 18, args.min_time, leaves_per_step=1)
    k8 = bench_ours(1, 200, 18, args.min_time, leaves_per_step=8)
    figures["ours_leaves1_b1_s200_a18"], figures["ours_leaves8_b1_s200_a18"] = k1, k8
    ratios["leaves8/leaves1_b1_s200_a18"] = k8 / k1
    print(f"  1 leaf/step {fmt(k1)}  8 leaves/step {fmt(k8)}  ratio {k8 / k1:.2f}")
    n1 = bench_ours_network(200, 18, args.min_time, leaves_per_step=1)
    n8 = bench_ours_network(200, 18, args.min_time, leaves_per_step=8)
    figures["ours_net_leaves1_b1_s200_a18"], figures["ours_net_leaves8_b1_s200_a18"] = n1, n8
    ratios["net_leaves8/leaves1_b1_s200_a18"] = n8 / n1
    print(f"  with a 2 x 256 MLP model (one torch thread): 1 leaf/step {n1:8.0f}  8 leaves/step {n8:8.0f}  "
          f"ratio {n8 / n1:.2f}")

    print("\nCost per simulation vs simulation count (pUCT, B=64, A=18)")
    for S in (16, 50, 200, 800):
        sps = bench_ours(64, S, 18, args.min_time)
        figures[f"ours_us_per_sim_b64_s{S}_a18"] = 1e6 / sps
        print(f"  S={S:<4} {1e6 / sps:7.3f} us/simulation")

    if peer:
        peer.close()
    if lz_exe is None and not args.no_lightzero:
        print("\nLightZero: no interpreter with lzero found (see --lightzero-python)")
    if args.json:
        print(json.dumps({"benchmark": "mcts", "figures": figures, "ratios": ratios}))


if __name__ == "__main__":
    main()

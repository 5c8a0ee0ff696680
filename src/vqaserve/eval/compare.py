"""`vqa eval --compare BASE CANDIDATE`: both models on the same questions, and the gate a nightly job runs.

Each data set (a jsonl file, or a synthetic split made with --n/--seed) is answered by both models
through the service's pipeline (eval/harness.py). Per data set: both accuracies, the difference
(candidate minus base, in points) and its standard error. The questions are the same for both, so
the error is that of a paired difference: the per-question differences d_i in {-1, 0, +1} (candidate
right and base wrong, same, or the reverse) give SE = sd(d) / sqrt(n), sd with n - 1. It is smaller
than two independent binomial errors because most questions are right or wrong for both.

`--max-regression POINTS`: exit 1 when the candidate's accuracy is below the base's by more than
POINTS on any data set (the point estimate; the table shows the SE to judge how sure that is).

A model is written as for --model: a model dir, hub id or bundled name (`shop-toy`); with an adapter
as `MODEL+ADAPTER` (ADAPTER: an adapter dir or bundled adapter name; with the upstream engine the
name vLLM serves it under); or an adapter dir alone, whose base model its train.json (or
adapter_config.json) names.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqaserve.errors import InvalidRequest
from vqaserve.eval.harness import EvalItem, Report


@dataclass(frozen=True)
class ModelChoice:
    spec: str  # as written
    model: str  # model dir, hub id (bundled names resolved)
    adapter: str | None = None  # the name it is served under in the pipeline
    adapter_path: str | None = None

    @property
    def label(self) -> str:
        return self.spec


def parse_choice(spec: str) -> ModelChoice:
    """BASE or CANDIDATE as written on the command line (see the module docstring)."""
    from vqaserve.settings import resolve_model_path

    if "+" in spec:
        model, _, adapter = spec.partition("+")
        if not model or not adapter:
            raise InvalidRequest(f"--compare {spec!r}: write MODEL+ADAPTER, e.g. shop-toy+./runs/adapter")
        return ModelChoice(spec, resolve_model_path(model), Path(adapter.rstrip("/")).name,
                           resolve_model_path(adapter))
    where = Path(resolve_model_path(spec))
    if (where / "adapter_config.json").is_file():
        return ModelChoice(spec, resolve_model_path(_adapter_base(where)), where.name, str(where))
    return ModelChoice(spec, str(where) if where.exists() else spec)


def _adapter_base(path: Path) -> str:
    for name, key in (("train.json", "base_model"), ("adapter_config.json", "base_model_name_or_path")):
        try:
            base = json.loads((path / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(base, str) and base:
            return base
    raise InvalidRequest(f"--compare {path}: this adapter does not name its base model; write MODEL+{path}")


@dataclass(frozen=True)
class DataSet:
    name: str  # as shown in the table
    items: tuple[EvalItem, ...]


@dataclass(frozen=True)
class Row:
    data: str
    n: int
    base: float  # accuracy, 0..1
    candidate: float
    diff_points: float  # candidate - base, in points
    se_points: float  # standard error of the paired difference, in points
    base_failed: int = 0
    candidate_failed: int = 0

    def regressed(self, max_regression: float | None) -> bool:
        return max_regression is not None and self.diff_points < -max_regression


def paired(base: Sequence[bool], candidate: Sequence[bool]) -> tuple[float, float]:
    """(mean difference, its standard error), both in points, over questions answered by both."""
    n = len(base)
    if n != len(candidate) or n == 0:
        raise ValueError("both models must answer the same, non-empty list of questions")
    d = [int(c) - int(b) for b, c in zip(base, candidate, strict=True)]
    mean = sum(d) / n
    if n < 2:
        return mean * 100, math.nan
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    return mean * 100, math.sqrt(var / n) * 100


def row(name: str, base: Report, candidate: Report) -> Row:
    diff, se = paired([o.correct for o in base.outcomes], [o.correct for o in candidate.outcomes])
    return Row(name, base.n, base.accuracy, candidate.accuracy, diff, se,
               sum(o.error is not None for o in base.outcomes), sum(o.error is not None for o in candidate.outcomes))


# A pipeline factory: (model, {adapter name: path}) -> an object with `answer` and `engine`.
PipelineFactory = Callable[[str, dict[str, str]], Any]
Evaluate = Callable[[Any, Sequence[EvalItem], str | None], Awaitable[Report]]


async def compare(base: ModelChoice, candidate: ModelChoice, datasets: Sequence[DataSet],
                  build: PipelineFactory, evaluate: Evaluate) -> tuple[list[Row], dict[str, Any]]:
    """Answer every data set with both models; one pipeline per base model (adapters share it)."""
    sides = _name_adapters(base, candidate)
    reports: dict[tuple[int, str], Report] = {}
    for model in dict.fromkeys(side.model for side in sides):
        users = [i for i, side in enumerate(sides) if side.model == model]
        adapters = {sides[i].adapter: sides[i].adapter_path for i in users if sides[i].adapter}
        pipeline = build(model, {k: v for k, v in adapters.items() if k and v})
        await pipeline.engine.start()
        try:
            for i in users:
                for ds in datasets:
                    reports[(i, ds.name)] = await evaluate(pipeline, ds.items, sides[i].adapter)
        finally:
            await pipeline.engine.close()
    rows = [row(ds.name, reports[(0, ds.name)], reports[(1, ds.name)]) for ds in datasets]
    details = {ds.name: {"base": reports[(0, ds.name)].summary(), "candidate": reports[(1, ds.name)].summary()}
               for ds in datasets}
    return rows, details


def _name_adapters(base: ModelChoice, candidate: ModelChoice) -> list[ModelChoice]:
    """Two different adapters of one base model with the same folder name get distinct names."""
    if (base.model == candidate.model and base.adapter and base.adapter == candidate.adapter
            and base.adapter_path != candidate.adapter_path):
        from dataclasses import replace

        return [replace(base, adapter=f"{base.adapter}-base"), replace(candidate, adapter=f"{candidate.adapter}-cand")]
    return [base, candidate]


def format_rows(rows: Sequence[Row], base: ModelChoice, candidate: ModelChoice, max_regression: float | None) -> str:
    width = max(12, *(len(r.data) for r in rows))
    lines = [f"base: {base.label}    candidate: {candidate.label}",
             f"{'data':<{width}} {'n':>6} {'base':>8} {'candidate':>10} {'diff ± SE (points)':>20}  verdict",
             "-" * (width + 60)]
    for r in rows:
        verdict = ("WORSE" if r.regressed(max_regression) else "ok") if max_regression is not None else ""
        se = "n/a" if math.isnan(r.se_points) else f"{r.se_points:.1f}"
        lines.append(f"{r.data:<{width}} {r.n:>6} {r.base * 100:>7.1f}% {r.candidate * 100:>9.1f}% "
                     f"{f'{r.diff_points:+.1f} ± {se}':>20}  {verdict}")
    lines.append("SE: standard error of the paired per-question difference (candidate minus base)")
    return "\n".join(lines)


# --- the `vqa eval` flags (cli/eval.py adds them and calls run_from_args) ------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compare", nargs=2, metavar=("BASE", "CANDIDATE"),
                   help="answer the --data sets with both models and compare (MODEL, MODEL+ADAPTER or an adapter dir)")
    p.add_argument("--data", dest="compare_data", action="append", default=[], metavar="FILE|SPLIT",
                   help="with --compare: a jsonl file or a synthetic split (with --n, --seed); repeat for several")
    p.add_argument("--max-regression", type=float, metavar="POINTS",
                   help="with --compare: exit 1 when the candidate is worse than the base by more than POINTS "
                        "on any data set")


def run_from_args(args: argparse.Namespace) -> int:
    import asyncio
    import tempfile

    from vqaserve.train.synthetic import SPLITS

    if args.data or args.synthetic:
        raise InvalidRequest("with --compare, give the data sets as --data FILE|SPLIT (repeatable)")
    if not args.compare_data:
        raise InvalidRequest(f"--compare needs at least one --data FILE.jsonl or --data SPLIT ({', '.join(SPLITS)})")
    if args.max_regression is not None and not args.max_regression >= 0:
        raise InvalidRequest("--max-regression must be a number of points >= 0")
    base, candidate = parse_choice(args.compare[0]), parse_choice(args.compare[1])
    with tempfile.TemporaryDirectory(prefix="vqa-compare-") as tmp:
        datasets = [_dataset(value, args, Path(tmp) / f"{i}") for i, value in enumerate(args.compare_data)]
        rows, details = asyncio.run(compare(base, candidate, datasets, _builder(args), _evaluator(args)))
    print(format_rows(rows, base, candidate, args.max_regression))
    report = {"command": "vqa " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              "base": base.label, "candidate": candidate.label, "max_regression": args.max_regression,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "se": "standard error of the paired per-question difference, in points",
              "rows": [r.__dict__ for r in rows], "details": details}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"report written to {args.out}", file=sys.stderr)
    failed = sum(r.base_failed + r.candidate_failed for r in rows)
    if failed:
        print(f"error: {failed} request(s) failed; the figures count them as wrong, so the comparison is no gate",
              file=sys.stderr)
        return 1
    worse = [r for r in rows if r.regressed(args.max_regression)]
    if worse:
        where = "; ".join(f"{r.data}: {r.diff_points:+.1f} points" for r in worse)
        print(f"gate: the candidate is worse than the base by more than {args.max_regression:g} points on {where}",
              file=sys.stderr)
        return 1
    return 0


def _dataset(value: str, args: argparse.Namespace, tmp: Path) -> DataSet:
    from vqaserve.eval.harness import items_from_jsonl
    from vqaserve.train.synthetic import SPLITS, write_split

    if value in SPLITS and not Path(value).is_file():
        if args.n < 1:
            raise InvalidRequest("--n must be at least 1")
        path = write_split(value, args.n, args.seed, tmp, progress=False, phrasing=args.phrasing)
        name = f"{value} n={args.n} seed={args.seed}" + (f" phrasing={args.phrasing}" if args.phrasing else "")
        return DataSet(name, tuple(items_from_jsonl(str(path), args.limit)))
    if not Path(value).is_file():
        raise InvalidRequest(f"--data {value!r} is neither a jsonl file nor a split ({', '.join(SPLITS)})")
    return DataSet(value, tuple(items_from_jsonl(value, args.limit)))


def _builder(args: argparse.Namespace) -> PipelineFactory:
    def build(model: str, adapters: dict[str, str]) -> Any:
        from vqaserve.settings import load_settings
        from vqaserve.wiring import build_pipeline

        return build_pipeline(load_settings(model=model, engine=args.engine, adapters=adapters or None))

    return build


def _evaluator(args: argparse.Namespace) -> Evaluate:
    async def run(pipeline: Any, items: Sequence[EvalItem], adapter: str | None) -> Report:
        from vqaserve.eval.harness import evaluate

        return await evaluate(pipeline, items, model=adapter, concurrency=args.concurrency, progress=not args.quiet)

    return run

"""What the train step asks of an accelerator, read from its XLA programs without running on one.

    make bench-census                     # fast at a GPU's batch (16, bf16): experiments/results/census.md
    python experiments/bench_census.py --preset learning --set train.batch_size=4

For the whole train step and each of its stages (``stages.py``: forward, and forward + backward where it
has weights): XLA's cost analysis of the program compiled here (flops, bytes accessed) and a census of the
operations GPUs run badly or serially, counted in the program as JAX lowers it (before any backend's
optimisation, so the same on every device): sorts, top-k, gathers, scatters, while loops, conditionals,
dynamic slices and custom calls, each with its largest size (elements of its biggest operand or result)
and the source function in ``maskrcnn/`` it comes from.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys

import harness

KINDS = (
    "sort",
    "topk",
    "gather",
    "scatter",
    "while",
    "conditional",
    "dynamic-slice",
    "dynamic-update-slice",
    "custom-call",
)
_LINE = re.compile(r"^\s*(?:ROOT\s+)?([\w.\-]+) = (.+?) ([a-z][a-z\-]*)\((.*)$")
_ARRAY = re.compile(r"\b(?:pred|[sufb]f?\d+|bf16|f8\w*)\[([\d,]*)\]")
_FRAME = re.compile(r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)\}")
_LOCATION = re.compile(r"^(\d+) \{file_name_id=(\d+) function_name_id=(\d+) line=(\d+)")
_NAMED = re.compile(r'^(\d+) "(.*)"$')


def _elements(shape: str) -> int:
    """Elements of the biggest array in an HLO shape string (a tuple holds several)."""
    sizes = [1]
    for dims in _ARRAY.findall(shape):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        sizes.append(n)
    return max(sizes)


def _tables(text: str) -> tuple[dict, dict, dict, dict]:
    """The debug tables of ``as_text(debug_info=True)``: file names, function names, locations, frames."""
    section, tables = None, {"FileNames": {}, "FunctionNames": {}, "FileLocations": {}, "StackFrames": {}}
    for line in text.splitlines():
        if line in tables:
            section = line
            continue
        if not line.strip():
            section = None
            continue
        if section in ("FileNames", "FunctionNames") and (m := _NAMED.match(line)):
            tables[section][int(m[1])] = m[2]
        elif section == "FileLocations" and (m := _LOCATION.match(line)):
            tables[section][int(m[1])] = (int(m[2]), int(m[3]), int(m[4]))
        elif section == "StackFrames" and (m := _FRAME.match(line)):
            tables[section][int(m[1])] = (int(m[2]), int(m[3]))
    return tables["FileNames"], tables["FunctionNames"], tables["FileLocations"], tables["StackFrames"]


def _source(frame: int, files, functions, locations, frames) -> str:
    """``module.function`` of the innermost frame of ``frame``'s stack in maskrcnn/, else the innermost."""
    seen, first = set(), None
    while frame in frames and frame not in seen:
        seen.add(frame)
        location, parent = frames[frame]
        file_id, function_id, _ = locations[location]
        path, function = files[file_id], functions[function_id]
        here = f"{os.path.splitext(os.path.basename(path))[0]}.{function}"
        first = first or here
        if "/maskrcnn/" in path:
            return here
        frame = parent
    return first or "?"


# JAX lowers the threefry random bits as a loop on CPU only (unrolled on a GPU): counted apart.
RNG_WHILE = "while (threefry)"
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?([\w.\-]+) \{$")
_CALLEES = re.compile(r"\b(?:to_apply|calls|body|condition)=([\w.\-]+)|branch_computations=\{([^}]*)\}")


def census(lowered) -> dict:
    """Counts, largest size and source functions of each :data:`KINDS` operation in a lowered program.

    An operation inside a called computation (``jnp.sort`` is a jitted function of its own, a loop has a
    body) carries no stack frame of its own: it takes the frame of the first call that reaches it."""
    text = lowered.as_text(dialect="hlo", debug_info=True)
    files, functions, locations, frames = _tables(text)
    shapes, ops, caller_frame = {}, [], {}
    computation = None
    for line in text.splitlines():
        if c := _COMPUTATION.match(line):
            computation = c[1]
            continue
        m = _LINE.match(line)
        if not m:
            continue
        name, shape, op, rest = m.groups()
        shapes[name] = _elements(shape)
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        ops.append((computation, name, op, rest, int(frame[1]) if frame else None))
        for callee in _CALLEES.finditer(rest):
            for target in filter(None, re.split(r"[,\s]+", callee[1] or callee[2])):
                caller_frame.setdefault(target, (computation, int(frame[1]) if frame else None))

    def in_threefry(computation):
        seen = set()
        while computation is not None and computation not in seen:
            if computation.startswith("threefry"):
                return True
            seen.add(computation)
            computation = caller_frame.get(computation, (None, None))[0]
        return False

    def frame_of(computation, frame):
        seen = set()
        while frame is None and computation in caller_frame and computation not in seen:
            seen.add(computation)
            computation, frame = caller_frame[computation]
        return frame

    found = collections.defaultdict(lambda: {"count": 0, "largest": 0, "sources": collections.Counter()})
    for computation, name, op, rest, frame in ops:
        if op not in KINDS:
            continue
        operands = re.findall(r"([\w.\-]+)", rest.split(")", 1)[0])
        size = max([shapes[name], *(shapes.get(o, 0) for o in operands)])
        if op == "while" and in_threefry(computation):
            op = RNG_WHILE
        if op == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', rest)
            op = f"custom-call {target[1] if target else '?'}"
        frame = frame_of(computation, frame)
        source = "?" if frame is None else _source(frame, files, functions, locations, frames)
        entry = found[op]
        entry["count"] += 1
        entry["largest"] = max(entry["largest"], size)
        entry["sources"][source] += 1
    return dict(found)


def cost(compiled) -> dict:
    """XLA's cost analysis of a compiled program: flops and bytes accessed (this machine's backend)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older JAX: one dict per device program
        analysis = analysis[0]
    return {"flops": float(analysis.get("flops", 0.0)), "bytes": float(analysis.get("bytes accessed", 0.0))}


def describe(name: str, fn, args) -> dict:
    lowered = fn.lower(*args)
    return {"name": name, **cost(lowered.compile()), "census": census(lowered)}


def _sources(entry) -> str:
    return ", ".join(f"{s} ({n})" if n > 1 else s for s, n in entry["sources"].most_common(4))


def table(rows: list[dict]) -> str:
    lines = [
        "| program | GFLOP | GB accessed | "
        + " | ".join(k for k in KINDS if k != "custom-call")
        + " | custom calls |",
        "|---|---:|---:|" + "---:|" * (len(KINDS) - 1) + "---|",
    ]
    for r in rows:
        c = r["census"]
        cells = []
        for kind in KINDS[:-1]:
            e = c.get(kind)
            cells.append(f"{e['count']} ({e['largest']:,})" if e else "")
        customs = ", ".join(
            f"{k.split(' ', 1)[1]} x{v['count']}" for k, v in c.items() if k.startswith("custom-call")
        )
        lines.append(
            f"| {r['name']} | {r['flops'] / 1e9:.2f} | {r['bytes'] / 1e9:.3f} | "
            + " | ".join(cells)
            + f" | {customs} |"
        )
    return "\n".join(lines)


def rng_note(rows: list[dict]) -> str:
    loops = rows[0]["census"].get(RNG_WHILE, {"count": 0})["count"]
    return (
        f"Not in the while column: the {loops} loops of the random bits (threefry) in the {rows[0]['name']}, "
        "which JAX lowers as loops on a CPU only (a GPU's program has them unrolled)."
    )


def where_table(rows: list[dict]) -> str:
    """Every sort, top-k, scatter and while loop of the programs, with the function it comes from."""
    lines = ["| program | operation | count | largest (elements) | from |", "|---|---|---:|---:|---|"]
    for r in rows:
        for kind in ("sort", "topk", "scatter", "while", "gather"):
            e = r["census"].get(kind)
            if e:
                lines.append(f"| {r['name']} | {kind} | {e['count']} | {e['largest']:,} | {_sources(e)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fast")
    p.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="config overrides (default: train.batch_size=16, train.mixed_precision=True: a GPU's step)",
    )
    p.add_argument("--out", default=os.path.join(harness.RESULTS, "census.md"))
    args = p.parse_args(argv)
    overrides = args.set if args.set is not None else ["train.batch_size=16", "train.mixed_precision=True"]

    import jax
    from programs import setup
    from stages import train_programs

    from maskrcnn.config import apply_overrides, load_config

    config = apply_overrides(load_config(args.preset), overrides)
    programs = setup(config)
    step_args = (programs["state"], programs["batch"], programs["key"])
    rows = [describe("whole train step", programs["step"], step_args)]
    for program in train_programs(programs["model"], programs["batch"], programs["key"]):
        rows.append(describe(f"{program.name}: forward", program.forward, program.args))
        if program.backward is not None:
            rows.append(
                describe(f"{program.name}: forward + backward", program.backward, program.backward_args)
            )
    command = f"python experiments/bench_census.py --preset {args.preset}" + "".join(
        f" --set {o}" for o in overrides
    )
    text = f"""# The train step's XLA programs: cost and the operations GPUs run badly

{harness.header(command)}

`{args.preset}` with {", ".join(f"`{o}`" for o in overrides)}: image {config.data.image_size} px, batch
{config.train.batch_size}; random weights, a synthetic batch. GFLOP and GB accessed: XLA's cost analysis of
each program compiled for this machine's backend ({jax.devices()[0].platform}). The operation columns count
each kind in the program as JAX lowers it, before any backend's passes (the same on a GPU), with the
largest size in elements (of its biggest operand or result) in brackets. A stage's rows are its program
alone (`experiments/stages.py`); the whole step is one program, so its counts are not the rows' sum
(XLA fuses and shares across stage borders, and the backward pass adds its own gathers and scatters).

{table(rows)}

{rng_note(rows)}

Where they come from (the innermost function in `maskrcnn/` of each operation's source stack):

{where_table(rows)}
"""
    harness.write(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

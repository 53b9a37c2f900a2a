"""The house's layers: every module of dualspeed/ imports only from its own layer or the layers below it, and no
modules import each other in a circle. Read from the source with `ast` (every import, a function's own
included, relative ones resolved), so nothing is imported to check it.

A new module must be placed in LAYERS; a new upward import or circle fails here, naming the files."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# bottom to top: a module may import from its own layer and the layers before it
LAYERS = [
    ("foundation", ["dualspeed", "dualspeed.cli", "dualspeed.envlock", "dualspeed.provenance", "dualspeed.modes",
                    "dualspeed.typed_merge", "dualspeed.launch"]),
    ("vtp", ["dualspeed.vtp"]),
    ("config", ["dualspeed.config", "dualspeed.batching", "dualspeed.inllm_config"]),
    ("data", ["dualspeed.data"]),
    ("models", ["dualspeed.models"]),
    ("grid", ["dualspeed.grid"]),
    ("train", ["dualspeed.train"]),
    ("evaluation", ["dualspeed.evaluation"]),
    ("report", ["dualspeed.report"]),
    ("bench", ["dualspeed.bench"]),
]


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module under root/package (a package is its __init__.py)."""
    out = {}
    for f in sorted((root / package).rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of `known` that module `name` imports, anywhere in its file."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def owner(dotted: str) -> str | None:  # the longest known module a dotted name lies in
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = name if is_pkg else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub; `from mod import name` imports mod
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(t for t in map(owner, targets) if t is not None and t != name)
    return found


def layer_of(name: str, layers) -> int | None:
    """The layer whose longest entry holds `name`; the top-level package's entry holds only its __init__."""
    best = None
    for i, (_, prefixes) in enumerate(layers):
        for p in prefixes:
            holds = name == p or ("." in p and name.startswith(p + "."))
            if holds and (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def violations(root: Path, package: str, layers) -> list[str]:
    known = modules(root, package)
    graph = {n: imports(n, f, known) for n, f in known.items()}
    names = [n for n, _ in layers]
    out = [f"{n} is in no layer: add it to LAYERS in tests/test_layers.py" for n in known if layer_of(n, layers) is None]
    for n, deps in sorted(graph.items()):
        for d in sorted(deps):
            lo, hi = layer_of(n, layers), layer_of(d, layers)
            if lo is not None and hi is not None and hi > lo:
                out.append(f"{known[n].relative_to(root)} ({names[lo]}) imports {d} ({names[hi]}), a higher layer")
    out += [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    return out


def test_every_import_runs_down_the_layers_and_none_in_a_circle():
    assert violations(ROOT, "dualspeed", LAYERS) == []


def test_a_planted_upward_import_or_circle_is_found(tmp_path):
    shutil.copytree(ROOT / "dualspeed", tmp_path / "dualspeed", ignore=shutil.ignore_patterns("__pycache__"))
    data = tmp_path / "dualspeed" / "data" / "dataset.py"
    data.write_text(data.read_text() + "\n\ndef _late():\n    from ..train import trainer  # noqa\n")
    found = violations(tmp_path, "dualspeed", LAYERS)
    assert found == ["dualspeed/data/dataset.py (data) imports dualspeed.train.trainer (train), a higher layer"]
    # two modules of one layer importing each other: allowed by the layers, refused as a circle
    (tmp_path / "dualspeed" / "modes.py").write_text("from . import cli\n")
    (tmp_path / "dualspeed" / "cli.py").write_text("from .modes import FAST\n")
    assert "import cycle: dualspeed.cli <-> dualspeed.modes" in violations(tmp_path, "dualspeed", LAYERS)
    (tmp_path / "dualspeed" / "stray.py").write_text("")
    assert "dualspeed.stray is in no layer: add it to LAYERS in tests/test_layers.py" in \
        violations(tmp_path, "dualspeed", LAYERS)


def test_planning_a_run_imports_no_model_trainer_or_image_generator():
    """What the Snakefile imports and runs at plan time stays light: the VTP registry (torch: the methods are torch
    code) and the grid, never transformers, the model, the trainer, PIL or the synthetic image generator."""
    code = ("import sys, yaml\n"
            "from dualspeed.grid import plan_check, recipe, variants\n"
            "from dualspeed.modes import INFERENCE_MODES\n"
            "cfg = yaml.safe_load(open('config/config.yaml'))\n"
            "cfg = plan_check.check(cfg, 'workflow/schemas/config.schema.yaml')\n"
            "recipe.sft_spec(cfg, variants.all_points(cfg['grid'])[0])\n"
            "print(' '.join(sorted(sys.modules)))\n")
    loaded = set(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                                timeout=300).stdout.split())
    heavy = {"transformers", "PIL", "peft", "pandas", "matplotlib", "lmms_eval", "dualspeed.data.synth",
             "dualspeed.data.dataset", "dualspeed.models", "dualspeed.train", "dualspeed.evaluation",
             "dualspeed.report", "dualspeed.bench"}
    assert "dualspeed.vtp" in loaded and sorted(heavy & loaded) == []

"""Visual-token-pruning plugins: the interface and registry (base.py) and one file per method, nothing else.

Every module in this package is imported on first use, so a new method is one file here with a
`@register("<name>")` class: a VTPMethod (selection) or a MergeMethod (see base.py). Methods kept outside the package (a user's experiment, a test) are
loaded from the modules or .py files listed in $DUALSPEED_VTP_PLUGINS (os.pathsep-separated).
"""
import importlib
import importlib.util
import os
import pkgutil
from pathlib import Path

from .base import (SIGNALS, MergeMethod, Option, Reduced, VTPContext, VTPMethod, available, check, get, keep_count,
                   parse, register)

__all__ = ["SIGNALS", "MergeMethod", "Option", "Reduced", "VTPContext", "VTPMethod", "available", "check", "get",
           "keep_count", "parse", "register"]

for _mod in pkgutil.iter_modules(__path__):  # every file here is the interface or a method
    try:
        importlib.import_module(f"{__name__}.{_mod.name}")
    except Exception as _e:  # noqa: BLE001 - name the file that failed, not only the line inside it
        raise PluginImportError(f"VTP method file {Path(__path__[0]) / (_mod.name + '.py')} failed to import: "
                                f"{type(_e).__name__}: {_e}") from _e


class PluginImportError(ImportError):
    pass


def _load_external(spec: str) -> None:
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"DUALSPEED_VTP_PLUGINS names {spec}, which does not exist")
        mspec = importlib.util.spec_from_file_location(f"dualspeed_vtp_ext_{path.stem}", path)
        module = importlib.util.module_from_spec(mspec)
        load, where = (lambda: mspec.loader.exec_module(module)), f"the file {path}"
    else:
        load, where = (lambda: importlib.import_module(spec)), f"the module {spec}"
    try:
        load()
    except Exception as e:  # noqa: BLE001 - whatever the plugin raised, say which plugin it was
        raise PluginImportError(f"VTP plugin {where} (named in DUALSPEED_VTP_PLUGINS) failed to import: "
                                f"{type(e).__name__}: {e}") from e


for _spec in filter(None, os.environ.get("DUALSPEED_VTP_PLUGINS", "").split(os.pathsep)):
    _load_external(_spec)

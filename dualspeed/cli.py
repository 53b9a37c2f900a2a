"""The argument parser every `python -m dualspeed...` command uses.

A repeated option must never lose a value silently (`--set a=1 --set b=2` once trained into a finished run's
directory because only the last `--set` counted): options that take a list accumulate (`action="extend"`),
and an option that takes one value is refused when it is given twice.
"""
from __future__ import annotations

import argparse


class _Once(argparse._StoreAction):
    def __call__(self, parser, namespace, values, option_string=None):
        seen = parser._given
        if self.dest in seen:
            parser.error(f"{option_string} was given twice ({seen[self.dest]!r}, then {values!r}); give it once")
        seen[self.dest] = values
        super().__call__(parser, namespace, values, option_string)


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self._given: dict = {}

    def add_argument(self, *names, **kwargs):
        if names and names[0].startswith("-") and kwargs.get("action", "store") == "store":
            kwargs["action"] = _Once
        return super().add_argument(*names, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self._given = {}
        return super().parse_known_args(args, namespace)

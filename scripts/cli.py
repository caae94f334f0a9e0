"""What every script shares: the repository root on sys.path, quiet logs, and the absl entry of the config scripts.

Imported first by every script (`import cli`; `python scripts/x.py` puts scripts/ on sys.path):

- the repository root goes first on sys.path, so a script runs from a checkout without `pip install -e .` and
  always uses the checkout it sits in;
- the INFO lines of XLA's backend probing ("Unable to initialize backend 'tpu'") and of orbax's checkpointing stay
  out of the terminal. They come back with absl's `--verbosity=0` (or 1 for debug) on the config scripts, or with
  the environment variable FASTSAMPLERS_VERBOSE=1 on any script;
- `main(fn)` is the whole entry of a config script: it defines `--config` (an ml_collections config file,
  file.py or file.py:arg, locked: a misspelt `--config.key=` override fails with one line naming the key and the
  closest valid one, `override_error`) and `--workdir`, parses the flags and calls fn(config, workdir). A script
  with more flags defines them with absl's `flags` before calling it;
- `main(fn, distributed=True)` adds the multi-host flags (`--distributed`, `--coordinator_address`,
  `--num_processes`, `--process_id`) and calls `jax.distributed.initialize` with them before fn, so before anything
  touches the devices (scripts/train.py, scripts/fid_pretrained.py).

    import cli  # noqa: F401  (first: it puts the repository on sys.path)
    from fastsamplers.experiments.runs import oracle_quickstart

    if __name__ == "__main__":
        cli.main(oracle_quickstart.run, workdir="outputs/quickstart")
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from typing import Any, Callable, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[:1] != [ROOT]:
    sys.path.insert(0, ROOT)

VERBOSE_ENV = "FASTSAMPLERS_VERBOSE"
# Python loggers whose INFO lines are noise in a terminal: XLA's backend probing, orbax (which also logs through
# absl's logger, quieted by the absl verbosity).
NOISY_LOGGERS = ("jax._src.xla_bridge", "orbax", "absl")


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run, for a benchmark's record: `python scripts/NAME.py ARGS` relative to the
    repository (ARGS: argv, or the process's own arguments when argv is None)."""
    import shlex

    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", os.path.relpath(os.path.abspath(script), ROOT), *args])


def verbose() -> bool:
    """FASTSAMPLERS_VERBOSE is set to something other than "", "0" or "false"."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false")


def configure_logs() -> None:
    """Raise the noisy loggers to WARNING; with FASTSAMPLERS_VERBOSE, show every INFO line instead."""
    from absl import logging as _  # noqa: F401  (first, so that the "absl" logger is absl's own, which names callers)

    if verbose():
        logging.basicConfig(level=logging.INFO)
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


configure_logs()


def distributed_flags() -> None:
    """Define the multi-host flags: `--distributed` (call `jax.distributed.initialize()` first; on a cluster with a
    supported scheduler, SLURM, TPU pods, ..., it finds the coordinator by itself) and, elsewhere,
    `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on each host. Read by `init_distributed`."""
    from absl import flags

    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (one process per host).")
    flags.DEFINE_string("coordinator_address", None, "With --distributed: HOST:PORT of process 0.")
    flags.DEFINE_integer("num_processes", None, "With --distributed: the number of processes.")
    flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")


def init_distributed() -> None:
    """With --distributed (flags of `distributed_flags`, parsed): `jax.distributed.initialize` from them. Call it
    before anything touches the devices."""
    from absl import flags

    if flags.FLAGS.distributed:
        import jax

        jax.distributed.initialize(coordinator_address=flags.FLAGS.coordinator_address,
                                   num_processes=flags.FLAGS.num_processes, process_id=flags.FLAGS.process_id)


def override_error(config: Any, path: str) -> str | None:
    """Why the override `--config.PATH=...` names no key of `config`, as one sentence naming the closest valid key;
    None when every part of PATH is a key (or PATH indexes a list, which this does not follow).

    Example:
        >>> import ml_collections
        >>> config = ml_collections.ConfigDict({"train": {"num_steps": 10, "lr": 0.1}})
        >>> override_error(config, "train.num_stepz")
        "config.train has no key 'num_stepz'; did you mean 'num_steps'?"
        >>> override_error(config, "train.num_steps") is None
        True
    """
    node, walked = config, "config"
    for part in path.split("."):
        if not hasattr(node, "keys"):
            if "[" in part or node is None:  # a list index, or a placeholder that the override may fill
                return None
            return f"{walked} is a value ({type(node).__name__}), not a section: it has no key {part!r}"
        keys = [str(key) for key in node.keys()]
        if part not in keys:
            close = difflib.get_close_matches(part, keys, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"its keys: {', '.join(sorted(keys))}"
            return f"{walked} has no key {part!r}; {hint}"
        node, walked = node[part], f"{walked}.{part}"
    return None


def overrides(argv: Sequence[str], name: str = "config") -> list[str]:
    """The paths of the `--NAME.PATH=...` (or `--NAME.PATH VALUE`) overrides in argv, in order."""
    prefixes = (f"--{name}.", f"-{name}.")
    return [arg.split("=", 1)[0].split(".", 1)[1] for arg in argv if arg.startswith(prefixes)]


def _config_spec(argv: Sequence[str], name: str = "config") -> str | None:
    """The value of `--NAME=SPEC` or `--NAME SPEC` in argv."""
    for i, arg in enumerate(argv):
        for flag in (f"--{name}", f"-{name}"):
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1:]
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
    return None


def parse_flags(argv: Sequence[str]) -> list[str]:
    """absl's flag parsing (`app.parse_flags_with_usage`), but a misspelt `--config.key=` override exits with one
    line on stderr, `error: --config.PATH: ...` (`override_error`), instead of ml_collections' traceback."""
    from absl import app, flags

    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError):  # how ml_collections reports an override path that names no key
        spec = _config_spec(argv[1:])
        try:
            config = flags.FLAGS["config"].parser.parse(spec)  # the config file once more, without the overrides
        except Exception:  # noqa: BLE001  (the original error is the one to show then)
            config = None
        for path in overrides(argv[1:]) if config is not None else ():
            message = override_error(config, path)
            if message is not None:
                sys.exit(f"error: --config.{path}: {message}")
        raise


def main(fn: Callable[[Any, str], Any], *, workdir: str | None = None, workdir_help: str = "Directory for the outputs.",
         config_help: str = "Path to an experiment config file (file.py or file.py:arg).",
         distributed: bool = False) -> None:
    """Run fn(config, workdir) from the command line: `--config FILE.py[:ARG]` (required, with `--config.key=value`
    overrides) and `--workdir` (required when `workdir` is None, else its default), then absl's own flags
    (`--verbosity`, ...). With `distributed`, also the flags of `distributed_flags`, and `init_distributed()` runs
    before fn. Does not return: absl's `app.run` exits."""
    from absl import app, flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    flags.DEFINE_string("workdir", workdir, workdir_help)
    flags.mark_flags_as_required(["config"] + (["workdir"] if workdir is None else []))
    if distributed:
        distributed_flags()

    def entry(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        if flags.FLAGS["verbosity"].present or verbose():
            for name in NOISY_LOGGERS:  # the command line (or the environment) asked for these lines
                logging.getLogger(name).setLevel(logging.NOTSET)
        else:  # app.run raised absl's default to INFO; keep the terminal to warnings
            absl_logging.set_verbosity(absl_logging.WARNING)
        if distributed:
            init_distributed()
        fn(flags.FLAGS.config, flags.FLAGS.workdir)

    app.run(entry, flags_parser=parse_flags)

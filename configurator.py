"""
The one shared helper for configuration, nanoGPT-style but strict.

A stage script declares its settings as plain top-level assignments, then calls
`configure(globals())`:

    batch_size = 16
    learning_rate = 3e-4
    from configurator import configure
    configure(globals())

The command line is then read in order:
    python pretrain.py config/darija_small.py --batch_size=32 --compile=False

- a path ending in .py is a config file: plain Python, executed, and every name
  it assigns (not starting with "_") must be one of the script's settings;
- `--key=value` (or `--key value`) overrides one setting; the value is parsed as
  a Python literal when it looks like one (32, 3e-4, False, [1, 2]) and is
  otherwise taken as a string; a bare `--key` sets a boolean setting to True.

Mistakes are errors, never silent: an unknown key names the closest valid key,
and a value of the wrong type says which type was expected.

Stages that read the same config file (pretrain.py runs prepare.py on the same
file) pass `also_from=("prepare.py",)`: the settings of that sibling script are
then accepted too and left for it to use. The sibling's settings are found by
reading its source (top-level assignments before its `configure(` call), never
by importing it, so stages stay independent.
"""
import ast
import difflib
import os
import sys


class ConfigError(ValueError):
    pass


def setting_names(script_path):
    """Names a script assigns at top level before it calls configure(...)."""
    with open(script_path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=script_path)
    names = []
    for node in tree.body:
        if isinstance(node, (ast.Expr, ast.Assign)) and _calls_configure(node.value):
            break  # `configure(globals())` or `settings = configure(globals())`
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name) and not t.id.startswith("_")]
    return names


def _calls_configure(node):
    return isinstance(node, ast.Call) and getattr(node.func, "id", None) == "configure"


def configure(scope, argv=None, also_from=()):
    """Apply config files and --key=value overrides from argv to `scope` (a script's globals).
    A mistake ends the script with its message (no traceback: the user's input was wrong, not the code)."""
    try:
        return _configure(scope, argv, also_from)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None


def _configure(scope, argv, also_from):
    argv = sys.argv[1:] if argv is None else argv
    script = scope.get("__file__") or sys.argv[0]
    own = [n for n in setting_names(script) if n in scope]
    here = os.path.dirname(os.path.abspath(script))
    foreign = {n for sibling in also_from for n in setting_names(os.path.join(here, sibling))} - set(own)
    valid = set(own) | foreign

    def check_key(key, where):
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"
            raise ConfigError(f"unknown config key '{key}' in {where}{hint}")

    def assign(key, value, where):
        check_key(key, where)
        if key in own:  # a sibling's key is accepted and left for the sibling to read
            scope[key] = _checked(key, value, scope[key], where)

    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            if not arg.endswith(".py"):
                raise ConfigError(f"don't know what to do with argument '{arg}': "
                                  "expected a config file (.py) or --key=value")
            if not os.path.isfile(arg):
                raise ConfigError(f"config file not found: {arg}")
            values = {}
            with open(arg, encoding="utf-8") as f:
                exec(compile(f.read(), arg, "exec"), {}, values)
            for key, value in values.items():
                if not key.startswith("_") and not callable(value) and type(value).__name__ != "module":
                    assign(key, value, arg)
        else:
            key, eq, text = arg[2:].partition("=")
            check_key(key, "the command line")
            if not eq:
                current = scope.get(key) if key in own else None
                next_is_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
                if isinstance(current, bool) and not (next_is_value and argv[i + 1] in ("True", "False")):
                    text = "True"
                elif next_is_value:
                    i += 1
                    text = argv[i]
                else:
                    raise ConfigError(f"--{key} needs a value: --{key}=VALUE")
            assign(key, _parse(text), "the command line")
        i += 1
    return {k: scope[k] for k in own}


def _parse(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _checked(key, value, default, where):
    """Return value if it fits the type of the default, else raise a clear error."""
    if default is None or value is None:
        return value
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"config key '{key}' in {where} expects {type(default).__name__} "
                          f"(default {default!r}), got {type(value).__name__} {value!r}")
    return value

"""Settings for the stage scripts: defaults in the script, then config files and --key=value:

    python pretrain.py config/darija_small.py --batch_size=32 --compile

A script's settings are its top-level assignments up to the statement that calls configure
(`settings = configure(globals())`, also when nested, e.g. in `if __name__ == "__main__":`).
Arguments apply in order: a .py file is plain Python, each name it assigns must be a setting;
`--key=value` is a Python literal (32, 3e-4, [1, 2]), else a string; a bare `--key` sets a bool or
None setting to True. A value after a space is never taken: `--compile x.py` is a flag, then a file.
Mistakes end the script with one clear line. also_from=("prepare.py",) accepts that sibling's
settings too, leaving them to it; settings are read from a script's source, never imported.
plain() turns settings into values a checkpoint can hold (numbers, strings, lists, dicts).

The folders a run writes are settings too: plain_name() checks that a dataset or run name is one
folder name, claim() locks a folder for one process at a time (docs/reliability.md), and claim_output()
also refuses one holding files the script did not write; atomic_write() writes a file there whole or
not at all. So are the Hugging Face datasets a `sources` setting names: hub_files() lists one's files
for a config and split, and hub_read() reads one, downloaded through huggingface_hub's cache (checked,
reused offline).
"""
import ast
import atexit
import csv
import difflib
import itertools
import os
import re
import socket
import sys
import types
import zlib


def setting_names(script_path):
    """The names a script assigns at top level before its first statement that calls configure()."""
    with open(script_path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=script_path)
    names = []
    for statement in tree.body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "configure":
                return names
        if isinstance(statement, (ast.Assign, ast.AnnAssign)):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            names += [t.id for t in targets if isinstance(t, ast.Name) and not t.id.startswith("_")]
    return names


def configure(scope, argv=None, also_from=()):
    """Apply config files and --key=value arguments (default: sys.argv) to scope, a script's globals."""
    argv = sys.argv[1:] if argv is None else argv
    script = scope.get("__file__") or sys.argv[0]
    own = [name for name in setting_names(script) if name in scope]
    valid = set(own)
    for sibling in also_from:  # a script in the same folder
        valid.update(setting_names(os.path.join(os.path.dirname(os.path.abspath(script)), sibling)))
    for arg in argv:
        if arg.startswith("--"):
            where = "the command line"
            key, has_value, text = arg[2:].partition("=")
            if has_value:
                try:
                    settings = {key: ast.literal_eval(text)}
                except (ValueError, SyntaxError):
                    settings = {key: text}  # --init_from=resume: a word is a string
            elif key in own and not (scope[key] is None or isinstance(scope[key], bool)):
                fail(f"--{key} needs a value: write --{key}=VALUE")
            else:
                settings = {key: True}  # a flag (a sibling's key too: the sibling checks it)
        elif arg.endswith(".py"):
            if not os.path.isfile(arg):
                fail(f"config file not found: {arg}")
            where, names = arg, {}
            with open(arg, encoding="utf-8") as f:
                exec(compile(f.read(), arg, "exec"), names)
            settings = {k: v for k, v in names.items()  # not __builtins__, imported modules, functions
                        if not k.startswith("_") and not callable(v) and not isinstance(v, types.ModuleType)}
        else:
            fail(f"don't know what to do with argument '{arg}': expected a config file (.py) or --key=value")
        for key, value in settings.items():
            if key not in valid:  # most likely a typo: name the closest valid key
                close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
                hint = f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(sorted(valid))
                fail(f"unknown config key '{key}' in {where}; {hint}")
            if key in own:  # a sibling's key is left for the sibling
                scope[key] = checked(key, value, scope[key], where)
    return {name: scope[name] for name in own}


def checked(key, value, default, where):
    """value, if it fits the type of the setting's default (a None default takes anything)."""
    if default is None or value is None:
        return value
    if isinstance(default, float) and type(value) is int:
        return float(value)  # --learning_rate=1 means 1.0
    expected = (list, tuple) if isinstance(default, (list, tuple)) else type(default)
    if not isinstance(value, expected) or isinstance(value, bool) != isinstance(default, bool):  # True is an int
        fail(f"config key '{key}' in {where} expects {type(default).__name__} "
             f"(default {default!r}), got {type(value).__name__} {value!r}")
    return value


def fail(message):
    raise SystemExit(f"config error: {message}")  # the user's mistake, not the code's: no traceback


def plain(value):
    """Settings as what torch.load(weights_only=True) accepts: numbers, strings, lists, dicts; else a string."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


# --- the folders a run writes ---------------------------------------------------------------------

def plain_name(key, value):
    """A dataset or run name must be one folder name: never a path that reaches elsewhere."""
    if not isinstance(value, str) or value in ("", ".", "..") or "/" in value or "\\" in value:
        fail(f"{key} must be a plain name (one folder name: no '/', no '..'), got {value!r}")
    return value


def claim(folder):
    """Lock `folder` for this process until it exits, with a file beside it (folder.lock): a second run
    on the same folder stops and names the process that holds it; a lock whose process is gone (on
    this machine) is taken over with a notice. Returns the lock file's path."""
    path = os.path.normpath(folder) + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    me = f"{os.getpid()} {socket.gethostname()} {' '.join(sys.argv)}"
    while True:
        try:
            with open(path, "x", encoding="utf-8") as f:  # "x": created only if absent, atomically
                f.write(me)
            break
        except FileExistsError:
            with open(path, encoding="utf-8") as f:
                pid, host, command = (f.read().split(" ", 2) + ["?", "?", "?"])[:3]
            if host != socket.gethostname() or process_alive(pid):
                fail(f"{folder} is in use by process {pid} on {host} ({command}): wait for it to finish, "
                     f"or stop it; if it is gone, delete {path}")
            print(f"note: taking over {path}, left by process {pid}, which is gone", file=sys.stderr)
            os.remove(path)
    atexit.register(release, path, me)
    return path


def claim_output(folder, ours, who, instead):
    """claim() `folder`, then stop in one line if it holds files `who` (the script) did not write: those are never
    replaced or mixed with, --force or not. A killed run's temporary files (NAME.tmpPID) are removed."""
    claim(folder)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    for name in [name for name in names if ".tmp" in name]:  # half-written: never read
        os.remove(os.path.join(folder, name))
    others = sorted(name for name in names if name not in ours and ".tmp" not in name)
    if others:
        raise SystemExit(f"{who}: {folder}/ holds files {who} did not write: {', '.join(others)}; {instead}")


def atomic_write(path, write):
    """write(tmp) writes a temporary file beside path (NAME.tmpPID, which claim_output() clears after a kill), then
    it is renamed to path: a crash never leaves a half-written file at path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def process_alive(pid):
    try:
        os.kill(int(pid), 0)  # signal 0: nothing is sent, the process is only looked up
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def release(path, me):  # at exit: remove the lock if it is still ours
    try:
        with open(path, encoding="utf-8") as f:
            ours = f.read() == me
        if ours:
            os.remove(path)
    except FileNotFoundError:
        pass


# --- the hub datasets a `sources` setting names -------------------------------------------------

def hub_refused(e, repo):
    """The one line for a refusal from the hub: gated, private or missing (401, 403), not found (404), other."""
    from huggingface_hub import constants
    from huggingface_hub.utils import GatedRepoError
    code, site = e.response.status_code, constants.ENDPOINT
    if code not in (401, 403):
        hint = ": check the name, config and split" if code == 404 else ""
        return f"the hub answered HTTP {code} for {repo}{hint}"
    why = ("no valid token was sent (HF_TOKEN is not set, nor `hf auth login` run, or the token is wrong)"
           if code == 401 else "your token has not been granted access")
    what = "is a gated dataset" if isinstance(e, GatedRepoError) else "is gated, private or missing"  # 401 for all
    return (f"{repo} {what} and {why} (HTTP {code}). Open {site}/datasets/{repo} , log in and "
            f"accept its terms, create a read token at {site}/settings/tokens , then `export HF_TOKEN=hf_...` and run "
            "again.")


def hub_files(src, who, extensions):
    """[(path in the repo, cached file or None)]: the files of a hub dataset (src: hub=, config=, split=, revision=)
    with one of the extensions, in order. Without the network, its copy in the Hugging Face cache, saying so (who:
    the script). A ValueError (one line) when nothing fits or the hub refuses; a ConnectionError when the dataset is
    out of reach (not cached either)."""
    from huggingface_hub import HfApi, snapshot_download  # imported here: half a second, for hub sources only
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError
    repo, rev, config, split = src["hub"], src.get("revision") or "main", src.get("config"), src.get("split", "train")
    try:  # dataset_info is not retried: no network shows at once
        found = {f.rfilename: None for f in HfApi().dataset_info(repo, revision=rev).siblings}
    except HfHubHTTPError as e:
        raise ValueError(hub_refused(e, repo)) from None
    except Exception as e:  # no network, HF_HUB_OFFLINE=1 (the error's class depends on huggingface_hub's version)
        try:
            folder = snapshot_download(repo, repo_type="dataset", revision=rev, local_files_only=True)
        except LocalEntryNotFoundError:  # not downloaded before (a ValueError too: caught first)
            raise ConnectionError(f"cannot reach the hub for {repo} ({e}), and it is not in the Hugging Face cache: "
                                  "connect to the internet, or use local files") from None
        except ValueError as malformed:  # a name that is no repo name
            raise ValueError(f"hub={repo!r}: {malformed}") from None
        print(f"{who}: cannot reach the hub ({e}): using {repo} from the Hugging Face cache", flush=True)
        cached = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
        found = {os.path.relpath(path, folder).replace(os.sep, "/"): path for path in cached}
    in_split = re.compile(rf"(^|[/_.-]){re.escape(split)}([/_.-]|$)")  # data/train-0000.parquet, train.jsonl, ...
    paths = sorted(p for p in found if p.startswith(f"{config}/" if config else "") and in_split.search(p)
                   and p.endswith(extensions))
    if not paths:
        kinds = "/".join(ext for ext in extensions if not ext.endswith(".gz"))
        kinds += " (or .gz)" if any(ext.endswith(".gz") for ext in extensions) else ""
        raise ValueError(f"no {kinds} files for split '{split}' in {repo} (config {config!r}); "
                         f"found: {', '.join(sorted(found)[:8]) or 'nothing'}")
    for path in paths:  # a hub (or HF_ENDPOINT) listing '../x' must not make us write outside the cache
        if os.path.isabs(path) or ".." in re.split(r"[/\\]", path):
            raise ValueError(f"{repo} lists a file outside the dataset, {path!r}: refusing to download anything")
    return [(p, found[p]) for p in paths]


def hub_read(src, remote, path, read, who):
    """Yield what read(local path) yields from a hub file, downloading it into the Hugging Face cache (its size and
    etag checked) only now. One found damaged (read raises an OSError, EOFError, ValueError, zlib or csv error) is
    fetched again, once; what was read before the damage showed is not given twice."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError
    done = 0
    for second_try in (False, True):
        try:
            path = path or hf_hub_download(src["hub"], remote, repo_type="dataset", revision=src.get("revision"))
        except HfHubHTTPError as e:
            raise ValueError(hub_refused(e, src["hub"])) from None
        except Exception as e:  # the connection broke, or the file came short (then it is not cached)
            raise ValueError(f"downloading {remote} from {src['hub']} failed ({e.__cause__ or e}); run again to "
                             "resume") from None
        try:
            for item in itertools.islice(read(path), done, None):
                yield item
                done += 1
            return
        except (OSError, EOFError, ValueError, zlib.error, csv.Error) as e:  # a truncated .gz, a broken parquet, ...
            if second_try:
                raise ValueError(f"{remote} from {src['hub']} cannot be read, even downloaded again ({e}): the hub's "
                                 "copy is damaged; leave it out (another config or split), or tell its authors"
                                 ) from None
            print(f"{who}: {remote} in the Hugging Face cache is damaged ({e}): downloading it again", flush=True)
            os.remove(os.path.realpath(path))  # the file itself, behind the snapshot's link to it
            path = None

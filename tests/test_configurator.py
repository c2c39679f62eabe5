"""configurator.py: config files, --key=value overrides, and the errors for typos and wrong types."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT
from configurator import atomic_write, plain, setting_names


def write_script(tmp_path, body):
    """A tiny stage script whose settings are the assignments in body; prints them after configure."""
    script = tmp_path / "stage.py"
    script.write_text(textwrap.dedent(body) + textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from configurator import configure
        settings = configure(globals())
        print(sorted(settings.items()))
    """))
    return script


def run(script, *args):
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          cwd=script.parent)


def error(script, *args):
    """The one line a mistake ends the script with (exit status 1, no traceback)."""
    r = run(script, *args)
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr)
    return r.stderr.strip()


@pytest.fixture
def stage(tmp_path):
    return write_script(tmp_path, """
        batch_size = 16
        learning_rate = 3e-4
        compile = False
        out_dir = "out/x"
        sources = [dict(path="a")]
        init_from = None
    """)


def test_defaults_file_then_command_line(stage, tmp_path):
    (tmp_path / "cfg.py").write_text("batch_size = 8\nout_dir = 'out/y'\n")
    r = run(stage, "cfg.py", "--batch_size=32", "--learning_rate=1", "--compile")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(sorted(dict(batch_size=32, learning_rate=1.0, compile=True,
                                               out_dir="out/y", sources=[dict(path="a")],
                                               init_from=None).items()))


def test_string_fallback(stage):
    r = run(stage, "--init_from=resume", "--out_dir=out/z")
    assert r.returncode == 0, r.stderr
    assert "('init_from', 'resume')" in r.stdout and "('out_dir', 'out/z')" in r.stdout


def test_space_separated_value_is_never_taken(stage):
    # out_dir's default is a string: a bare --out_dir is a mistake, and out/z is not taken as its value
    assert error(stage, "--out_dir", "out/z") == "config error: --out_dir needs a value: write --out_dir=VALUE"
    assert error(stage, "--batch_size") == "config error: --batch_size needs a value: write --batch_size=VALUE"


def test_bare_flag_then_config_file(stage, tmp_path):
    """`--compile cfg.py` is compile=True followed by the config file, not compile='cfg.py'."""
    (tmp_path / "cfg.py").write_text("batch_size = 8\n")
    r = run(stage, "--compile", "cfg.py")
    assert r.returncode == 0, r.stderr
    assert "('compile', True)" in r.stdout and "('batch_size', 8)" in r.stdout


def test_bare_flag_sets_a_none_default_to_true(stage):
    r = run(stage, "--init_from")  # None often means "decide later" (pretrain.py's compile = None)
    assert r.returncode == 0, r.stderr
    assert "('init_from', True)" in r.stdout


def test_unknown_key_on_command_line_names_closest(stage):
    # the user's mistake, not the code's: one line, no traceback; with or without a value
    for arg in ("--batch_sise=4", "--batch_sise"):
        assert error(stage, arg) == ("config error: unknown config key 'batch_sise' in the command line; "
                                     "did you mean 'batch_size'?")


def test_unknown_key_without_a_close_one_lists_the_valid_keys(stage):
    assert error(stage, "--zzz=1") == ("config error: unknown config key 'zzz' in the command line; valid keys: "
                                       "batch_size, compile, init_from, learning_rate, out_dir, sources")


def test_unknown_key_in_file_names_file_and_closest(stage, tmp_path):
    (tmp_path / "cfg.py").write_text("learning_rat = 1e-3\n")
    assert error(stage, "cfg.py") == ("config error: unknown config key 'learning_rat' in cfg.py; "
                                      "did you mean 'learning_rate'?")


def test_config_file_may_import_and_define_helpers(stage, tmp_path):
    """Imported modules, functions and _private names in a config file are not settings."""
    (tmp_path / "cfg.py").write_text("import math\n_base = 2\ndef double(x):\n    return 2 * x\n"
                                     "batch_size = double(_base)\nlearning_rate = math.sqrt(4)\n"
                                     "sources = [dict(path=p) for p in ('a', 'b')]\n")
    r = run(stage, "cfg.py")
    assert r.returncode == 0, r.stderr
    assert "('batch_size', 4)" in r.stdout and "('learning_rate', 2.0)" in r.stdout
    assert "('sources', [{'path': 'a'}, {'path': 'b'}])" in r.stdout


def test_wrong_type_is_an_error(stage):
    assert error(stage, "--batch_size=abc") == ("config error: config key 'batch_size' in the command line "
                                                "expects int (default 16), got str 'abc'")
    assert error(stage, "--compile=1") == ("config error: config key 'compile' in the command line "
                                           "expects bool (default False), got int 1")
    assert error(stage, "--batch_size=True") == ("config error: config key 'batch_size' in the command line "
                                                 "expects int (default 16), got bool True")


def test_types_that_are_accepted(stage):
    # an int for a float, a tuple for a list, anything for a None default
    r = run(stage, "--learning_rate=1", "--sources=('b',)", "--init_from=[1]", "--compile=True")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(sorted(dict(batch_size=16, learning_rate=1.0, compile=True, out_dir="out/x",
                                               sources=("b",), init_from=[1]).items()))


def test_missing_file_and_stray_argument(stage):
    assert error(stage, "nope.py") == "config error: config file not found: nope.py"
    assert error(stage, "hello") == ("config error: don't know what to do with argument 'hello': "
                                     "expected a config file (.py) or --key=value")


def test_sibling_keys_accepted_but_not_applied(tmp_path):
    (tmp_path / "sibling.py").write_text("vocab_size = 100\nfrom configurator import configure\n"
                                         "settings = configure(globals())\nlater = 1\n")
    script = write_script(tmp_path, "batch_size = 16\n")
    text = script.read_text().replace("configure(globals())", "configure(globals(), also_from=('sibling.py',))")
    script.write_text(text)
    (tmp_path / "cfg.py").write_text("vocab_size = 512\nbatch_size = 2\n")
    r = run(script, "cfg.py")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[('batch_size', 2)]"
    # names the sibling assigns after its configure() call are not settings
    assert error(script, "--later=2") == ("config error: unknown config key 'later' in the command line; "
                                          "valid keys: batch_size, vocab_size")
    # a bare flag for a sibling's key is let through: the sibling checks it against its own default
    assert run(script, "--vocab_size").stdout.strip() == "[('batch_size', 16)]"


def test_configure_nested_in_main_guard_ends_the_settings(tmp_path):
    """lora.py calls configure under `if __name__ == "__main__":` so that it can be imported."""
    script = tmp_path / "guarded.py"
    script.write_text(textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        from configurator import configure
        rank = 4
        alpha: float = 8.0
        _private = 1
        if __name__ == "__main__":
            settings = configure(globals())
            print(sorted(settings.items()))
        later = 1
    """))
    assert setting_names(str(script)) == ["rank", "alpha"]
    r = run(script, "--rank=8", "--alpha=16")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[('alpha', 16.0), ('rank', 8)]"
    assert error(script, "--later=2") == ("config error: unknown config key 'later' in the command line; "
                                          "valid keys: alpha, rank")


# --- the folders a run writes ------------------------------------------------------------------

def test_plain_name_refuses_paths():
    from configurator import plain_name
    assert plain_name("dataset", "darija_small") == "darija_small"
    for bad in ("../../victim", "a/b", "/tmp/x", "..", "", "a\\b"):
        with pytest.raises(SystemExit, match=r"config error: dataset must be a plain name \(one folder name"):
            plain_name("dataset", bad)


def holder(tmp_path, folder, seconds):
    """A process that claims `folder`, says so, then sleeps."""
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from configurator import claim; "
            f"claim({str(folder)!r}); print('claimed', flush=True); time.sleep({seconds})")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_claim_refuses_a_folder_in_use_and_takes_over_a_dead_lock(tmp_path):
    folder = tmp_path / "data" / "x"
    first = holder(tmp_path, folder, 30)
    try:
        assert first.stdout.readline().strip() == "claimed"
        second = holder(tmp_path, folder, 0)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 1
        assert f"config error: {folder} is in use by process {first.pid} on " in err and "Traceback" not in err
    finally:
        first.kill()
        first.wait()
    assert (tmp_path / "data" / "x.lock").exists()  # killed: its lock stays behind
    third = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                            f"from configurator import claim; claim({str(folder)!r}); print('claimed')"],
                           capture_output=True, text=True, timeout=30)
    assert third.returncode == 0 and third.stdout.strip() == "claimed"
    assert f"note: taking over {folder}.lock, left by process {first.pid}, which is gone" in third.stderr
    assert not (tmp_path / "data" / "x.lock").exists()  # released at exit


def test_plain_turns_settings_into_what_a_checkpoint_holds():
    assert plain({"a": (1, 2.5), 3: [None, True, "x"], "p": ROOT}) == {"a": [1, 2.5], "3": [None, True, "x"],
                                                                    "p": str(ROOT)}


def test_atomic_write_leaves_the_old_file_whole_when_writing_fails(tmp_path):
    path = tmp_path / "out" / "f.txt"
    atomic_write(str(path), lambda tmp: Path(tmp).write_text("new"))  # the folder is made
    assert path.read_text() == "new"

    def broken(tmp):
        Path(tmp).write_text("half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(path), broken)
    assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]

"""configurator.py: config files, --key=value overrides, and the errors for typos and wrong types."""
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT


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


def test_space_separated_value_and_string_fallback(stage):
    r = run(stage, "--out_dir", "out/z", "--init_from=resume")
    assert r.returncode == 0, r.stderr
    assert "('out_dir', 'out/z')" in r.stdout and "('init_from', 'resume')" in r.stdout


def test_unknown_key_on_command_line_names_closest(stage):
    r = run(stage, "--batch_sise=4")
    assert r.returncode != 0
    assert "unknown config key 'batch_sise' in the command line; did you mean 'batch_size'?" in r.stderr
    assert "Traceback" not in r.stderr  # the user's mistake, not the code's: a message, no traceback


def test_unknown_key_in_file_names_file_and_closest(stage, tmp_path):
    (tmp_path / "cfg.py").write_text("learning_rat = 1e-3\n")
    r = run(stage, "cfg.py")
    assert r.returncode != 0
    assert "unknown config key 'learning_rat' in cfg.py; did you mean 'learning_rate'?" in r.stderr


def test_wrong_type_is_an_error(stage):
    r = run(stage, "--batch_size=abc")
    assert r.returncode != 0
    assert "config key 'batch_size' in the command line expects int (default 16), got str 'abc'" in r.stderr
    r = run(stage, "--compile=1")
    assert "expects bool" in r.stderr


def test_missing_file_and_stray_argument(stage):
    assert "config file not found: nope.py" in run(stage, "nope.py").stderr
    assert "don't know what to do with argument 'hello'" in run(stage, "hello").stderr


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
    assert "unknown config key 'later'" in run(script, "--later=2").stderr

"""The server's settings are one table (issue 29): every field of ``Settings`` is a row (flag, variable, default,
parser, help) that ``bt serve``, ``Settings.from_env`` (the app for any ASGI runner) and the automatic server's
identity all derive from; a value that does not parse is one line naming its variable or flag."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from bridgetower_cli import autoserver
from bridgetower_cli.cli import serve as serve_command
from bridgetower_cli.cli.app import built
from bridgetower_cli.errors import BtError, UsageError
from bridgetower_cli.server.settings import OWN, SETTING, SETTINGS, Settings

# A value for each variable that is not its default, and the field's value it must give.
SAMPLE = {
    "models": ("a,b", ["a", "b"]),
    "device": ("cuda:1", "cuda:1"),
    "dtype": ("BFloat16", "bfloat16"),
    "threads": ("3", 3),
    "batch_size": ("5", 5),
    "fast_decode": ("yes", True),
    "keep_alive_s": ("5m", 300.0),
    "idle_exit": ("1", True),
    "api_key": ("s3cret", "s3cret"),
    "allowed_hosts": ("photos.lan,Box.Local.", ["photos.lan", "box.local"]),
    "api_key_file": ("~/key", Path("~/key").expanduser()),  # (read with the key: test_a_key_file_*)
    "host": ("::1", "::1"),
    "allow_paths": ("/srv/a:/srv/b", [Path("/srv/a").resolve(), Path("/srv/b").resolve()]),
    "index_dir": ("/srv/indexes", Path("/srv/indexes")),
    "no_pull": ("true", True),
    "max_models": ("4", 4),
    "max_body_bytes": ("2", 2 * 2**20),
    "body_timeout_s": ("90", 90.0),
    "max_image_bytes": ("0.5", 2**19),
    "max_texts": ("7", 7),
    "max_images": ("8", 8),
    "max_pairs": ("9", 9),
    "max_candidates": ("10", 10),
    "decode_pixels": ("12", 12_000_000),
    "request_timeout_s": ("1h", 3600.0),
    "graceful_timeout_s": ("2s", 2.0),
    "max_waiting": ("11", 11),
    "batch_window_s": ("0.02", 0.02),
}


def serve_context(*args: str):
    """``bt serve ARGS`` parsed as the command line does (nothing runs)."""
    command = built("serve")
    return command.make_context("serve", list(args))


def test_every_field_but_own_is_a_row_of_the_table():
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert fields - {"own"} == set(SETTING) == set(SAMPLE)
    assert len({s.env for s in SETTINGS}) == len(SETTINGS)
    assert len({flag for s in SETTINGS for flag in s.flags}) == sum(len(s.flags) for s in SETTINGS)
    defaults = Settings()
    for setting in SETTINGS:  # the dataclass's defaults are the table's
        assert getattr(defaults, setting.field) == setting.initial(), setting.field


def test_from_env_reads_every_field():
    sample = {name: value for name, value in SAMPLE.items() if name != "api_key_file"}
    env = {SETTING[name].env: text for name, (text, _) in sample.items()}
    read, defaults = Settings.from_env(env), Settings()
    for name, (_, expected) in sample.items():
        assert getattr(read, name) == expected, name
        assert getattr(read, name) != getattr(defaults, name), name
    assert Settings.from_env({}) == defaults  # nothing set: the defaults
    assert Settings.from_env({"BT_SERVE_MAX_TEXTS": ""}).max_texts == defaults.max_texts  # empty: unset


@pytest.mark.parametrize(
    "name, value",
    [
        ("BT_SERVE_MAX_TEXTS", "many"),
        ("BT_SERVE_MAX_WAITING", "0"),
        ("BT_SERVE_MAX_BODY_MB", "-1"),
        ("BT_SERVE_DECODE_BUDGET_MP", "nan"),
        ("BT_SERVE_KEEP_ALIVE", "soon"),
        ("BT_SERVE_REQUEST_TIMEOUT", "10 minutes\nor so"),
        ("BT_SERVE_NO_PULL", "perhaps"),
        ("BT_SERVE_BATCH_SIZE", "2.5"),
        ("BT_DEVICE", "gpu0"),
        ("BT_DTYPE", "float64"),
        ("BT_THREADS", "-2"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_variable(name, value):
    with pytest.raises(UsageError) as caught:
        Settings.from_env({name: value})
    assert str(caught.value).startswith(name) and "\n" not in str(caught.value)
    assert caught.value.hint and caught.value.exit_code == 2


def test_bt_serve_has_an_option_for_every_setting():
    options = {p.name: p for p in built("serve").params}
    for setting in SETTINGS:
        option = options[setting.field]
        assert tuple(option.opts) + tuple(option.secondary_opts) == setting.flags, setting.field
        assert setting.help in option.help and setting.env in option.help, setting.field
        if isinstance(setting.default, str):
            assert option.default == setting.default, setting.field


def test_the_command_line_goes_over_the_environment_over_the_defaults(monkeypatch):
    monkeypatch.setenv("BT_SERVE_MAX_TEXTS", "7")
    monkeypatch.setenv("BT_SERVE_MAX_IMAGES", "9")
    settings = serve_command._settings(serve_context("--max-texts", "5", "-m", "x", "-m", "y"), None)
    assert (settings.max_texts, settings.max_images, settings.max_pairs) == (5, 9, Settings().max_pairs)
    assert settings.models == ["x", "y"]


def test_bt_serve_reads_the_table_s_variables(bt):
    refused = bt("serve", "--port", "0", env={"BT_SERVE_HOST": "0.0.0.0"})
    assert refused.code == 1 and "needs an API key" in refused.stderr
    bad = bt("serve", "--port", "0", env={"BT_SERVE_MAX_WAITING": "lots"})
    assert bad.code == 2 and bad.stderr.count("\n") == 1 and "BT_SERVE_MAX_WAITING='lots'" in bad.stderr
    flag = bt("serve", "--port", "0", "--max-waiting", "lots")
    assert flag.code == 2 and "--max-waiting 'lots'" in flag.stderr
    idle = bt("serve", "--port", "0", "--idle-exit")
    assert idle.code == 1 and "keep-alive" in idle.stderr


def test_no_key_means_loopback_only():
    for host in ("0.0.0.0", "::", "192.168.1.2", "example.org", ""):
        with pytest.raises(BtError, match="needs an API key"):
            Settings(host=host).refuse_exposure()
        with pytest.raises(BtError, match="needs an API key"):
            Settings().refuse_exposure("::1", host)
        Settings(host=host, api_key="k").refuse_exposure(host)
        Settings(host=host).of_own().refuse_exposure()
    Settings().refuse_exposure("127.0.0.1", "::1", "localhost", "127.0.0.2")


def test_a_server_of_ones_own_has_no_key_no_roots_no_limits(monkeypatch):
    monkeypatch.setenv("BT_API_KEY", "s3cret")
    monkeypatch.setenv("BT_SERVE_MAX_WAITING", "3")
    settings = serve_command._settings(serve_context("--uds", "/run/s.sock", "--max-texts", "5"), Path("/run/s.sock"))
    assert settings.own and settings.api_key is None and settings.allow_paths == []
    assert settings.max_texts == OWN["max_texts"] and settings.request_timeout_s is None
    assert settings.max_waiting == 3  # (not a limit of a request's: heeded)


def test_the_automatic_server_identity_covers_the_table(monkeypatch):
    for setting in SETTINGS:
        if setting.field not in OWN:  # what a server of one's own heeds changes its identity
            assert autoserver.reads(setting.env), setting.env
    before = autoserver.ServerOptions().identity()
    monkeypatch.setenv("BT_SERVE_MAX_WAITING", "3")
    changed = autoserver.ServerOptions().identity()
    assert changed != before
    monkeypatch.setenv("BT_SERVER", "auto")  # (the caller's, not the server's: the same server)
    monkeypatch.setenv("BT_MODEL", "x")
    assert autoserver.ServerOptions().identity() == changed


def test_one_environment_reached_by_another_name_is_the_same_server(monkeypatch, tmp_path):
    """``bt`` runs ``.venv/bin/python3``, ``python -m bridgetower_cli`` ``.venv/bin/python``: one interpreter, one
    environment, one server (each switch between them started a new one: 5 s a call)."""
    before = autoserver.ServerOptions().identity()
    alias = tmp_path / "python-by-another-name"
    alias.symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(alias))
    assert autoserver.ServerOptions().identity() == before
    monkeypatch.setattr(sys, "prefix", str(tmp_path))  # (another environment: another server)
    assert autoserver.ServerOptions().identity() != before


def test_the_automatic_server_s_arguments_mean_its_options():
    options = autoserver.ServerOptions("cpu", "float32", 3, 4, "5m", True)
    arguments = options.arguments(Path("/run/bt/server.sock"))
    assert arguments[0] == "serve"
    context = serve_context(*arguments[1:])
    settings = serve_command._settings(context, context.params["uds"])
    assert (settings.device, settings.dtype, settings.threads, settings.batch_size) == ("cpu", "float32", 3, 4)
    assert (settings.keep_alive_s, settings.fast_decode, settings.idle_exit, settings.own) == (300.0, True, True, True)


def test_a_key_file_gives_the_key_and_must_be_private(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    key_file.chmod(0o600)
    assert Settings.from_env({"BT_API_KEY_FILE": str(key_file)}).api_key == "s3cret"
    assert Settings.from_env({"BT_API_KEY": "old"}, given={"api_key_file": str(key_file)}).api_key == "s3cret"
    with pytest.raises(UsageError, match="exclude each other"):
        Settings.from_env({"BT_API_KEY": "a", "BT_API_KEY_FILE": str(key_file)})
    key_file.chmod(0o644)
    with pytest.raises(UsageError, match="open to other users"):
        Settings.from_env({"BT_API_KEY_FILE": str(key_file)})

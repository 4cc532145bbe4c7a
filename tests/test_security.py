"""Only the owner reads account data and controls the parent: private ipc
sockets by default, CURVE with an allow-list on tcp, and no account stream on
plain tcp."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest

from feedsup import curve, endpoints
from feedsup.config import ConfigError, load_config
from feedsup.ipc.client import ControlError, CurveKeys, Subscriber, request
from harness import REPO, Feedsup, tied, wait_for, write_config

PRICE = {"name": "price", "market": "spot", "channel": "aggTrade", "symbols": ["BTCUSDT"]}
STREAM = '[[stream]]\nname = "p"\nmarket = "spot"\nchannel = "aggTrade"\nsymbols = ["BTCUSDT"]\n'
ACCOUNT = ('[[stream]]\nname = "acct"\nmarket = "spot"\nchannel = "account"\n'
           'api_key_env = "K"\napi_secret_env = "S"\n')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def keys(tmp_path):
    """A server pair, an allowed client pair and a stranger's pair."""
    folder = tmp_path / "keys"
    folder.mkdir()
    made = {name: curve.generate(str(folder), name) for name in ("server", "alice", "mallory")}
    return made


def client(keys, name: str) -> CurveKeys:
    return CurveKeys.load(keys["server"][0], keys[name][1])


def load_text(tmp_path, text: str):
    path = tmp_path / "feedsup.toml"
    path.write_text(text)
    return load_config(str(path))


def load_error(tmp_path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    return caught.value


# --- keys ----------------------------------------------------------------------------

def test_generated_secret_key_is_private_and_never_overwritten(keys, tmp_path):
    public_path, secret_path, public = keys["server"]
    assert stat.S_IMODE(os.stat(secret_path).st_mode) == 0o600
    assert curve.parse_certificate(open(public_path, "rb").read(), public_path) == (public.encode(), None)
    pub2, secret = curve.parse_certificate(open(secret_path, "rb").read(), secret_path)
    assert pub2 == public.encode() and curve.public_key_of(secret) == pub2
    with pytest.raises(FileExistsError):
        curve.generate(str(tmp_path / "keys"), "server")
    alice = client(keys, "alice")
    assert alice.secret.decode() not in repr(alice), "a secret key never shows in a repr"


def test_cli_key_generation(tmp_path):
    out = subprocess.run([sys.executable, "-m", "feedsup.curve", "srv", "--dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=REPO, timeout=30)
    assert out.returncode == 0, out.stderr
    public = out.stdout.split()[2]
    assert curve.is_z85_key(public)
    assert stat.S_IMODE(os.stat(tmp_path / "srv.key_secret").st_mode) == 0o600


# --- config ----------------------------------------------------------------------------

def test_curve_config_is_accepted(keys, tmp_path):
    config = load_text(tmp_path, f'[feedsup]\ncurve_server_key_file = "{keys["server"][1]}"\n'
                                 f'curve_allowed_clients = ["{keys["alice"][2]}"]\n' + STREAM)
    assert config.curve_server_key_file == keys["server"][1]
    assert config.curve_allowed_clients == (keys["alice"][2],)


@pytest.mark.parametrize("feedsup, key, reason", [
    ('curve_server_key_file = "{server_secret}"', "feedsup.curve_allowed_clients", "required with"),
    ('curve_allowed_clients = ["{alice}"]', "feedsup.curve_server_key_file", "required with"),
    ('curve_server_key_file = "{server_secret}"\ncurve_allowed_clients = ["not-a-key"]',
     "feedsup.curve_allowed_clients[0]", "not a CURVE public key"),
    ('curve_server_key_file = "{server_public}"\ncurve_allowed_clients = ["{alice}"]',
     "feedsup.curve_server_key_file", "holds no secret-key"),
    ('curve_server_key_file = "absent.key_secret"\ncurve_allowed_clients = ["{alice}"]',
     "feedsup.curve_server_key_file", "file not found"),
])
def test_curve_config_errors(keys, tmp_path, feedsup, key, reason):
    os.chmod(keys["server"][0], 0o600)     # private, but only the public half
    text = feedsup.format(server_secret=keys["server"][1], server_public=keys["server"][0],
                          alice=keys["alice"][2])
    err = load_error(tmp_path, "[feedsup]\n" + text + "\n" + STREAM)
    assert err.key == key and reason in err.reason, str(err)


def test_a_server_key_readable_by_others_is_refused(keys, tmp_path):
    os.chmod(keys["server"][1], 0o644)
    err = load_error(tmp_path, f'[feedsup]\ncurve_server_key_file = "{keys["server"][1]}"\n'
                               f'curve_allowed_clients = ["{keys["alice"][2]}"]\n' + STREAM)
    assert err.key == "feedsup.curve_server_key_file" and "chmod 600" in err.reason


@pytest.mark.parametrize("where", ["pub", "control"])
def test_account_streams_on_plain_tcp_are_refused_with_the_reason(tmp_path, where):
    err = load_error(tmp_path, f'[feedsup]\n{where} = "tcp://127.0.0.1:7780"\n' + ACCOUNT)
    assert err.key == f"feedsup.{where}"
    assert 'account stream "acct"' in err.reason and "curve_server_key_file" in err.reason


def test_account_streams_on_tcp_with_curve_or_on_ipc_are_accepted(keys, tmp_path):
    load_text(tmp_path, f'[feedsup]\npub = "tcp://127.0.0.1:7780"\n'
                        f'curve_server_key_file = "{keys["server"][1]}"\n'
                        f'curve_allowed_clients = ["{keys["alice"][2]}"]\n' + ACCOUNT)
    assert load_text(tmp_path, ACCOUNT).pub.startswith("ipc://")


def test_check_refuses_account_on_tcp_with_exit_78(tmp_path):
    path = tmp_path / "feedsup.toml"
    path.write_text('[feedsup]\npub = "tcp://0.0.0.0:7780"\n' + ACCOUNT)
    out = subprocess.run([sys.executable, "-m", "feedsup.cli", "check", "-c", str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=30, env={**os.environ, "K": "k", "S": "s"})
    assert out.returncode == 78 and "feedsup.pub" in out.stderr and "CURVE" not in out.stdout


# --- the private runtime folder ----------------------------------------------------------

def test_default_endpoints_live_in_the_runtime_folder():
    assert endpoints.runtime_dir({"XDG_RUNTIME_DIR": "/run/user/1000"}) == "/run/user/1000/feedsup"
    assert endpoints.runtime_dir({}, uid=1000) == "/tmp/feedsup-1000"
    assert endpoints.runtime_dir({"XDG_RUNTIME_DIR": "relative"}, uid=7) == "/tmp/feedsup-7"
    assert endpoints.default_pub({"XDG_RUNTIME_DIR": "/run/user/5"}) == "ipc:///run/user/5/feedsup/pub"


def test_folder_rules():
    folder = stat.S_IFDIR
    assert endpoints.folder_problem(folder | 0o700, 1000, 1000) is None
    assert "owned by uid 0" in endpoints.folder_problem(folder | 0o700, 0, 1000)
    assert "chmod 700" in endpoints.folder_problem(folder | 0o755, 1000, 1000)
    assert "not a folder" in endpoints.folder_problem(stat.S_IFREG | 0o700, 1000, 1000)


def test_an_open_default_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    (tmp_path / "feedsup").mkdir(mode=0o755)
    os.chmod(tmp_path / "feedsup", 0o755)
    err = load_error(tmp_path, STREAM)
    assert err.key == "feedsup.pub" and "chmod 700" in err.reason


def test_an_ipc_endpoint_in_a_missing_folder_is_refused(tmp_path):
    err = load_error(tmp_path, f'[feedsup]\ncontrol = "ipc://{tmp_path}/nowhere/ctl"\n' + STREAM)
    assert err.key == "feedsup.control" and "does not exist" in err.reason


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_ipc_sockets_are_owner_only(start_sim, start_feedsup, tmp_path):
    sim = start_sim(speed=1, symbols=("BTCUSDT",), trade_rate=10)
    fs, col = start_feedsup(sim, [PRICE])
    fs.wait_running("price")
    assert mode(tmp_path / "pub") == 0o600
    assert mode(tmp_path / "ctl") == 0o600


def test_default_endpoints_are_made_private_and_work(start_sim, tmp_path):
    sim = start_sim(speed=1, symbols=("BTCUSDT",), trade_rate=10)
    config = write_config(tmp_path, sim, [PRICE])
    text = config.read_text().replace(f'pub = "ipc://{tmp_path}/pub"\n', "").replace(
        f'control = "ipc://{tmp_path}/ctl"\n', "")
    config.write_text(text)
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run)}
    log = open(tmp_path / "feedsup.log", "wb")
    proc = subprocess.Popen(tied([sys.executable, "-m", "feedsup.cli", "run", "-c", str(config)]),
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        control = f"ipc://{run}/feedsup/ctl"
        wait_for(lambda: _status(control), 15, "status on the default control endpoint")
        assert mode(run / "feedsup") == 0o700
        assert mode(run / "feedsup" / "pub") == 0o600 and mode(run / "feedsup" / "ctl") == 0o600
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _status(control: str):
    try:
        return request(control, "status", timeout=1)
    except ControlError:
        return None


# --- CURVE end to end ---------------------------------------------------------------------

def test_only_allowed_clients_receive_and_refusals_are_counted(start_sim, tmp_path, keys):
    sim = start_sim(speed=1, symbols=("BTCUSDT",), trade_rate=20)
    pub, ctl = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, sim, [PRICE], feedsup={
        "pub": pub, "control": ctl, "curve_server_key_file": keys["server"][1],
        "curve_allowed_clients": [keys["alice"][2]]})
    fs = Feedsup(config, tmp_path)
    alice, mallory = client(keys, "alice"), client(keys, "mallory")
    try:
        status = wait_for(lambda: _curve_status(ctl, alice), 15, "status with an allowed key")
        assert status["curve_refused"] == 0
        with Subscriber(pub, ["aggTrade."], curve=alice) as good, \
                Subscriber(pub, ["aggTrade."], curve=mallory) as bad, \
                Subscriber(pub, ["aggTrade."]) as plain:
            assert good.recv(timeout=15) is not None, "an allowed client receives"
            assert bad.recv(timeout=2) is None, "an unknown key receives nothing"
            assert plain.recv(timeout=0.5) is None, "a client without CURVE receives nothing"
            wait_for(lambda: _curve_status(ctl, alice)["curve_refused"] >= 1, 10, "the refusal counted")
        with pytest.raises(ControlError):
            request(ctl, "status", timeout=1, curve=mallory)      # nor controls the parent
        # feedsup status reads the client keys from the environment.
        env = {**os.environ, curve.ENV_SERVER_KEY: keys["server"][0],
               curve.ENV_CLIENT_KEY_FILE: keys["alice"][1]}
        out = subprocess.run([sys.executable, "-m", "feedsup.cli", "status", "--control", ctl, "--json"],
                             cwd=REPO, capture_output=True, text=True, timeout=30, env=env)
        assert out.returncode == 0 and '"curve_refused"' in out.stdout, out.stderr
    finally:
        fs.close()


def _curve_status(control: str, keys: CurveKeys):
    try:
        return request(control, "status", timeout=1, curve=keys)
    except ControlError:
        return None

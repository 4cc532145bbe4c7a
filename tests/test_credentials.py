"""load_credentials: env vars and key files, permission checks, no leaks."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from feedsup.config import ConfigError, Stream
from feedsup.credentials import (
    Credentials, load_credentials, private_file_problem, secret_value_problem,
)

# Binance's documented HMAC example (spot and futures REST docs, "SIGNED
# endpoint examples"): fixed vectors, not anyone's real credentials.
DOC_KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"
DOC_SECRET = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
DOC_QUERY = ("symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
             "&recvWindow=5000&timestamp=1499827319559")
DOC_SIGNATURE = "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"

SECRET = "s3cretVALUEnobodyMaySee0123456789"
API_KEY = "apiKEYvalueAlsoPrivate9876543210"


def account(**keys: str) -> Stream:
    return Stream(name="acct", market="spot", channel="account", **keys)


def env_stream() -> Stream:
    return account(api_key_env="FS_KEY", api_secret_env="FS_SECRET")


def key_file(tmp_path: Path, text: str, mode: int = 0o600, name: str = "binance.key") -> str:
    path = tmp_path / name
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def assert_no_secret(text: str) -> None:
    assert SECRET not in text and API_KEY not in text


def failure(stream: Stream, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_credentials(stream, environ if environ is not None else {})
    for text in (str(caught.value), repr(caught.value), caught.value.reason):
        assert_no_secret(text)
    # No chained exception (parser error, decode error) can carry contents either.
    err = caught.value
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    return caught.value


# --- environment ----------------------------------------------------------------

def test_env_credentials_load_and_sign_like_binance():
    creds = load_credentials(env_stream(), {"FS_KEY": DOC_KEY, "FS_SECRET": DOC_SECRET})
    assert (creds.api_key, creds.api_secret, creds.method) == (DOC_KEY, DOC_SECRET, "hmac")
    assert creds.sign(DOC_QUERY) == DOC_SIGNATURE
    assert creds.source == "env FS_KEY/FS_SECRET"


def test_env_trailing_newline_is_stripped():
    creds = load_credentials(env_stream(), {"FS_KEY": API_KEY + "\n", "FS_SECRET": SECRET})
    assert creds.api_key == API_KEY


def test_missing_env_var_names_the_variable_not_a_value():
    err = failure(env_stream(), {"FS_KEY": API_KEY})
    assert err.key == 'stream "acct".api_secret_env'
    assert err.reason == "environment variable FS_SECRET is not set"


@pytest.mark.parametrize("value, reason", [
    ("", "is empty"), ("   ", "is empty"),
    (SECRET[:10] + " " + SECRET[10:], "contains spaces"),
    (SECRET + "é", "non-ASCII"),
])
def test_malformed_env_secret_is_refused_without_quoting_it(value, reason):
    err = failure(env_stream(), {"FS_KEY": API_KEY, "FS_SECRET": value})
    assert err.key == 'stream "acct".api_secret_env'
    assert reason in err.reason and "FS_SECRET" in err.reason


def test_secret_value_problem_accepts_binance_shaped_values():
    assert secret_value_problem(DOC_SECRET) is None


# --- repr and str never show values ---------------------------------------------

def test_repr_and_str_hide_secrets():
    creds = load_credentials(env_stream(), {"FS_KEY": API_KEY, "FS_SECRET": SECRET})
    for text in (repr(creds), str(creds), f"{creds}", f"{creds!r}", repr([creds]),
                 repr({"c": creds})):
        assert_no_secret(text)
        assert "FS_KEY/FS_SECRET" in text
    assert "hmac" in repr(creds)


def test_credentials_built_directly_hide_secrets_too():
    creds = Credentials(api_key=API_KEY, api_secret=SECRET)
    assert_no_secret(repr(creds))


def test_non_account_stream_has_no_credentials():
    err = failure(Stream(name="p", market="spot", channel="aggTrade", symbols=("BTCUSDT",)))
    assert "only account streams" in err.reason


# --- key files --------------------------------------------------------------------

def test_key_file_0600_is_accepted(tmp_path):
    path = key_file(tmp_path, f'api_key = "{DOC_KEY}"\napi_secret = "{DOC_SECRET}"\n')
    creds = load_credentials(account(key_file=path), {})
    assert (creds.api_key, creds.api_secret) == (DOC_KEY, DOC_SECRET)
    assert creds.sign(DOC_QUERY) == DOC_SIGNATURE
    assert creds.source == f"key_file {path}"


def test_key_file_0400_is_accepted(tmp_path):
    path = key_file(tmp_path, f'api_key = "{API_KEY}"\napi_secret = "{SECRET}"\n', 0o400)
    assert load_credentials(account(key_file=path), {}).api_secret == SECRET


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o660, 0o601])
def test_key_file_open_to_group_or_others_is_refused(tmp_path, mode):
    path = key_file(tmp_path, f'api_key = "{API_KEY}"\napi_secret = "{SECRET}"\n', mode)
    err = failure(account(key_file=path))
    assert (err.file, err.key) == (path, "key_file")
    assert f"(mode {mode:04o})" in err.reason
    assert f"chmod 600 {path}" in err.reason


def test_symlink_to_private_file_is_judged_by_its_target(tmp_path):
    target = key_file(tmp_path, f'api_key = "{API_KEY}"\napi_secret = "{SECRET}"\n', 0o644)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    assert "chmod 600" in failure(account(key_file=str(link))).reason
    os.chmod(target, 0o600)
    assert load_credentials(account(key_file=str(link)), {}).api_key == API_KEY


def test_missing_key_file(tmp_path):
    path = str(tmp_path / "absent.key")
    err = failure(account(key_file=path))
    assert (err.file, err.key, err.reason) == (path, "key_file", "file not found")


def test_directory_as_key_file_is_refused(tmp_path):
    os.chmod(tmp_path, 0o700)
    err = failure(account(key_file=str(tmp_path)))
    assert "not a regular file" in err.reason


@pytest.mark.timeout(10)
def test_fifo_as_key_file_is_refused_without_hanging(tmp_path):
    # open() of a FIFO blocks until a writer comes: a key file must be opened
    # non-blocking and refused for what it is.
    path = str(tmp_path / "fifo.key")
    os.mkfifo(path, 0o600)
    err = failure(account(key_file=path))
    assert (err.file, err.key) == (path, "key_file")
    assert "not a regular file" in err.reason


def test_private_file_problem_rules():
    regular = stat.S_IFREG
    assert private_file_problem(regular | 0o600, 1000, 1000, "/k") is None
    assert "owned by uid 0" in private_file_problem(regular | 0o600, 0, 1000, "/k")
    assert "chown 1000 /k" in private_file_problem(regular | 0o600, 0, 1000, "/k")
    assert "chmod 600 /k" in private_file_problem(regular | 0o640, 1000, 1000, "/k")
    assert "not a regular file" in private_file_problem(stat.S_IFDIR | 0o700, 1, 1, "/k")


@pytest.mark.parametrize("text, key, reason", [
    (f'api_key = "{API_KEY}"\n', "api_secret", "required"),
    (f'api_secret = "{SECRET}"\n', "api_key", "required"),
    (f'api_key = "{API_KEY}"\napi_secret = 5\n', "api_secret", "must be a quoted string"),
    (f'api_key = ""\napi_secret = "{SECRET}"\n', "api_key", "is empty"),
    (f'api_key = "{API_KEY}"\napi_secret = "{SECRET}"\n{SECRET} = "x"\n', "(keys)",
     "1 unknown key(s)"),
    (f"key={API_KEY}\nsecret={SECRET}\n", "line 1", "quoted values"),
    (f'api_key = "{API_KEY}"\napi_secret = "{SECRET}\n', "line 2", "not valid TOML"),
])
def test_malformed_key_file_never_echoes_its_contents(tmp_path, text, key, reason):
    path = key_file(tmp_path, text)
    err = failure(account(key_file=path))
    assert (err.file, err.key) == (path, key)
    assert reason in err.reason


# --- Ed25519 ------------------------------------------------------------------------

try:  # optional dependency: the HMAC tests above run without it
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
except ImportError:
    serialization = ec = ed25519 = None

needs_cryptography = pytest.mark.skipif(ed25519 is None, reason="cryptography not installed")


def write_pem(tmp_path: Path, private_key, mode: int = 0o600, password: bytes | None = None) -> str:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    pem = private_key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8, encryption)
    path = tmp_path / "ed25519.pem"
    path.write_bytes(pem)
    os.chmod(path, mode)
    return str(path)


@needs_cryptography
def test_ed25519_key_signs_verifiably(tmp_path):
    private_key = ed25519.Ed25519PrivateKey.generate()
    stream = account(api_key_env="FS_KEY", ed25519_key_file=write_pem(tmp_path, private_key))
    creds = load_credentials(stream, {"FS_KEY": API_KEY})
    assert creds.method == "ed25519" and creds.api_secret == ""
    signature = base64.b64decode(creds.sign(DOC_QUERY))
    private_key.public_key().verify(signature, DOC_QUERY.encode())  # raises if wrong
    assert "ed25519" in repr(creds) and "BEGIN" not in repr(creds)


@needs_cryptography
def test_ed25519_with_key_file_holding_only_the_api_key(tmp_path):
    pem = write_pem(tmp_path, ed25519.Ed25519PrivateKey.generate())
    path = key_file(tmp_path, f'api_key = "{API_KEY}"\n')
    creds = load_credentials(account(key_file=path, ed25519_key_file=pem), {})
    assert creds.api_key == API_KEY and creds.method == "ed25519"


@needs_cryptography
def test_ed25519_with_key_file_holding_a_secret_too_is_ambiguous(tmp_path):
    pem = write_pem(tmp_path, ed25519.Ed25519PrivateKey.generate())
    path = key_file(tmp_path, f'api_key = "{API_KEY}"\napi_secret = "{SECRET}"\n')
    err = failure(account(key_file=path, ed25519_key_file=pem))
    assert err.key == "api_secret" and "one or the other" in err.reason


@needs_cryptography
def test_ed25519_pem_readable_by_others_is_refused(tmp_path):
    pem = write_pem(tmp_path, ed25519.Ed25519PrivateKey.generate(), mode=0o644)
    err = failure(account(api_key_env="FS_KEY", ed25519_key_file=pem), {"FS_KEY": API_KEY})
    assert (err.file, err.key) == (pem, "ed25519_key_file") and "chmod 600" in err.reason


@needs_cryptography
def test_encrypted_ed25519_pem_is_refused_clearly(tmp_path):
    pem = write_pem(tmp_path, ed25519.Ed25519PrivateKey.generate(), password=b"pw")
    err = failure(account(api_key_env="FS_KEY", ed25519_key_file=pem), {"FS_KEY": API_KEY})
    assert "encrypted" in err.reason


@needs_cryptography
def test_not_a_pem_is_refused(tmp_path):
    path = key_file(tmp_path, SECRET, name="bad.pem")
    err = failure(account(api_key_env="FS_KEY", ed25519_key_file=path), {"FS_KEY": API_KEY})
    assert err.reason == "is not a PEM private key"


@needs_cryptography
def test_non_ed25519_pem_is_refused(tmp_path):
    pem = write_pem(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    err = failure(account(api_key_env="FS_KEY", ed25519_key_file=pem), {"FS_KEY": API_KEY})
    assert "not an Ed25519 private key" in err.reason


# --- streams built by hand (not through load_config) --------------------------------

def test_stream_without_any_source_is_refused():
    err = failure(account())
    assert err.key == 'stream "acct".api_key_env' and "needs" in err.reason


def test_stream_without_a_signing_secret_is_refused():
    err = failure(account(api_key_env="FS_KEY"), {"FS_KEY": API_KEY})
    assert "nothing to sign with" in err.reason


def test_loaded_config_feeds_load_credentials(tmp_path):
    from feedsup.config import load_config

    key_path = key_file(tmp_path, f'api_key = "{API_KEY}"\napi_secret = "{SECRET}"\n')
    config_path = tmp_path / "feedsup.toml"
    config_path.write_text('[[stream]]\nname = "acct"\nmarket = "usdm"\nchannel = "account"\n'
                           'key_file = "binance.key"\n')
    stream = load_config(str(config_path)).streams[0]
    assert stream.key_file == key_path
    assert load_credentials(stream, {}).api_secret == SECRET

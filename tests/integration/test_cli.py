"""The `p2pm` command line as scripts use it: --json shapes, exit codes, refusals
that change nothing, and `tap`."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from p2pm.common.cli import bus
from p2pm.common.home import ACTORS
from tests.helpers import Node, run_p2pm

pytestmark = pytest.mark.slow

PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


def test_init_json_shape_config_and_refusal_to_reinit(short_tmp: Path) -> None:
    home = short_tmp / "n"
    out = run_p2pm(home, "init", "--no-passphrase", "--json",
                   "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap",
                   f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}", check=True)
    data = orjson.loads(out.stdout)
    assert set(data) == {"peer_id", "home"}
    assert data["peer_id"].startswith("12D3KooW") and data["home"] == str(home)
    assert "NOT protected" in out.stderr
    config = (home / "config.toml").read_text()
    assert 'listen = ["/ip4/127.0.0.1/tcp/0"]' in config
    assert f'bootstrap = ["/ip4/10.0.0.1/tcp/4001/p2p/{PEER}"]' in config

    identity_before = (home / "identity.key").read_bytes()
    again = run_p2pm(home, "init", "--no-passphrase")
    assert again.returncode != 0 and "refusing to re-initialise" in again.stderr
    assert (home / "identity.key").read_bytes() == identity_before
    assert (home / "config.toml").read_text() == config


@pytest.mark.parametrize("args, complaint", [
    (["--listen", "/ip4/999.1.1.1/tcp/1"], "not a valid multiaddr"),
    (["--listen", "tcp://127.0.0.1:4001"], "not a valid multiaddr"),
    (["--bootstrap", "/ip4/10.0.0.1/tcp/4001"], "must end in /p2p/<peer id>"),
])
def test_bad_multiaddr_at_init_is_refused_and_nothing_is_written(
        short_tmp: Path, args: list[str], complaint: str) -> None:
    home = short_tmp / "n"
    out = run_p2pm(home, "init", "--no-passphrase", "--listen", "/ip4/0.0.0.0/tcp/0", *args)
    assert out.returncode == 2
    assert complaint in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not home.exists()


def test_init_with_an_empty_passphrase_file_is_refused(short_tmp: Path) -> None:
    (short_tmp / "pass").write_text("\n")
    out = run_p2pm(short_tmp / "n", "init", "--passphrase-file", str(short_tmp / "pass"))
    assert out.returncode == 2 and "is empty" in out.stderr
    assert not (short_tmp / "n").exists()


def test_status_and_id_json_shapes(node: Node) -> None:
    after = orjson.loads(node.p2pm("status", "--json", check=True).stdout)
    before = orjson.loads(node.p2pm("--json", "status", check=True).stdout)
    for status in (after, before):
        assert status["peer_id"] == node.peer_id
        assert set(status["actors"]) == set(ACTORS)
        for row in status["actors"].values():
            assert {"state", "pid", "healthy", "uptime_s", "epoch"} <= set(row)
            assert row["state"] == "RUNNING" or row["state"] == "STARTING"
    text = node.p2pm("status", check=True).stdout
    assert node.peer_id in text and all(a in text for a in ACTORS)

    # Each status asks every actor once with a fresh client: none may go unanswered
    # (a lost wake-up in the bus once failed about one such call in a hundred).
    for _ in range(50):
        missing = {a: r for a, r in bus.statuses(node.home).items() if not isinstance(r, dict)}
        assert missing == {}

    ident = orjson.loads(node.p2pm("id", "--json", check=True).stdout)
    assert set(ident) == {"peer_id", "addrs"} and ident["peer_id"] == node.peer_id
    assert all(a.endswith(f"/p2p/{node.peer_id}") for a in ident["addrs"])


def test_commands_on_a_node_that_is_down(short_tmp: Path) -> None:
    home = short_tmp / "n"
    run_p2pm(home, "init", "--no-passphrase", check=True)
    status = run_p2pm(home, "status", "--json")
    assert status.returncode == 1 and status.stdout == ""
    assert status.stderr.strip().count("\n") == 0 and "not running" in status.stderr
    down = run_p2pm(home, "down")
    assert down.returncode == 0 and "not running" in down.stdout
    # No actor to answer: a timeout after a few seconds of retrying, exit 3.
    call = run_p2pm(home, "call", "gateway", "sys.ping", "--timeout", "0.3")
    assert call.returncode == 3 and "error timeout:" in call.stderr


def test_call_results_and_exit_codes(node: Node) -> None:
    ping = orjson.loads(node.p2pm("call", "keystore", "sys.ping", "--json", check=True).stdout)
    assert ping["pong"] is True and ping["actor"] == "keystore"
    assert ping["pid"] == node.pids()["keystore"]
    me = orjson.loads(node.p2pm("call", "keystore", "identity", "--json", check=True).stdout)
    assert me["peer_id"] == node.peer_id and len(me["public_key"]) == 44  # 32 bytes, base64
    # The keystore signs only for an actor presenting its token; the CLI is none.
    unsigned = node.p2pm("call", "keystore", "sign",
                         '{"domain": "libp2p-pubsub:", "data": "aGVsbG8="}')
    assert unsigned.returncode == 1 and "error forbidden: " in unsigned.stderr
    assert "names none" in unsigned.stderr

    unknown = node.p2pm("call", "keystore", "no.such.method")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("p2pm: error unknown_method: ")
    refused = node.p2pm("call", "keystore", "sign", '{"domain": "evil:", "data": ""}')
    assert refused.returncode == 1 and "error forbidden: " in refused.stderr
    bad = node.p2pm("call", "keystore", "sign", '{"domain": 7}')
    assert bad.returncode == 1 and "error bad_params: " in bad.stderr

    for malformed in ("{not json", "[1, 2]", '"text"'):
        out = node.p2pm("call", "keystore", "sys.ping", malformed)
        assert out.returncode == 2, malformed
        assert "PARAMS_JSON" in out.stderr and out.stdout == ""


def test_up_on_a_running_node_says_so(node: Node) -> None:
    pids = node.pids()
    out = node.p2pm("up", check=True)
    assert "already running" in out.stdout
    assert node.pids() == pids


def test_tap_prints_events_and_hides_heartbeats_unless_asked(node: Node) -> None:
    out = node.p2pm("tap", "keystore.sys", "--count", "2", "--json", check=True, timeout=30)
    events = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert len(events) == 2
    for ev in events:
        assert ev["topic"] == "keystore.sys.heartbeat"
        assert {"epoch", "seq", "ts", "data"} <= set(ev)
        assert ev["data"]["pid"] == node.pids()["keystore"]
    assert events[1]["seq"] == events[0]["seq"] + 1

    text = node.p2pm("tap", "gossip.sys.heartbeat", "--count", "1", check=True, timeout=30)
    topic, epoch_seq, data = text.stdout.strip().split("  ", 2)
    assert topic == "gossip.sys.heartbeat" and ":" in epoch_seq
    assert orjson.loads(data)["pid"] == node.pids()["gossip"]

    # Every actor beats once a second: 1.5 s of an unfiltered tap shows none of it.
    quiet = node.p2pm("tap", "--seconds", "1.5", check=True, timeout=30)
    assert "sys.heartbeat" not in quiet.stdout

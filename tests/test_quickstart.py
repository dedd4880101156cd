"""The README's quick start, run as written: its commands are read from
README.md (not copied here), shipcast is started as ``make run`` starts it
(the Makefile's run target's environment and partners file, the installed
``shipcast run``), and the walk must end with a delivered, verified webhook
and the demo partner's SMS and email in the development outbox, shown in the
portal with the order's tracking page link.

``shipcast run`` is started with the environment the Makefile's run target
gives it (``make run`` itself would also install into ``.venv``). What differs,
so the test can run beside others: ``.venv/bin/`` is this test's own venv;
port 8000 is a free port (in the commands, in the partners file's receiver
URL, which names shipcast's own port, and in ``SHIPCAST_PUBLIC_URL``, which
tracking links start with); RabbitMQ is the test's own virtual host; and the
log is text."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import pytest

from .conftest import AMQP_HOST, free_port

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADDRESS = "127.0.0.1:8000"


def quick_start_commands(readme: str) -> list[str]:
    """Every command of the quick start's ``sh`` blocks, continuation lines joined."""
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL):
        commands += [line.strip() for line in re.sub(r"\\\n\s*", " ", block).splitlines() if line.strip()]
    return commands


def run_target_environment(makefile: str) -> dict[str, str]:
    """The SHIPCAST_* variables the Makefile's run target gives ``shipcast run``:
    its exports, and the ``VAR=$${VAR:-default}`` on the command's line."""
    env = dict(re.findall(r"^export (SHIPCAST_\w+) \?= (\S+)$", makefile, flags=re.MULTILINE))
    recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    [command] = [line for line in recipe.splitlines() if "/shipcast run" in line]
    env.update(re.findall(r"(SHIPCAST_\w+)=\$\$\{\1:-([^}]*)\}", command))
    return env


def test_the_quick_start_is_parsed_as_the_contract_says() -> None:
    commands = quick_start_commands((ROOT / "README.md").read_text())
    assert commands[:2] == ["make run", "make test"]  # the README's first and second commands
    assert any("/v1/events" in command for command in commands[2:])
    env = run_target_environment((ROOT / "Makefile").read_text())
    assert env["SHIPCAST_DEVELOPMENT"] == "1" and env["SHIPCAST_API_TOKEN"] == "dev-token"
    assert env["SHIPCAST_CONFIG"] == "deploy/partners.example.yaml"


def settled(command: str, output: str) -> bool:
    """Whether a command's output is final: the delivery log with the three
    deliveries delivered, an outbox listing with a message; anything else at once."""
    if "deliveries list" in command:
        return len(re.findall(r"\bdelivered\b", output)) >= 3
    if "outbox list" in command:
        return output.count("\n") >= 2 and not output.startswith("the outbox is empty")
    return True


def outbox_rows(page: str) -> list[dict[str, str]]:
    """The outbox page's rows: each message's number, channel and recipient."""
    found = []
    for row in re.findall(r"<tr>(.*?)</tr>", page, flags=re.DOTALL):
        number = re.search(r'href="/portal/p/\w+/outbox/(\d+)"', row)
        cells = re.findall(r"<td>(.*?)</td>", row, flags=re.DOTALL)
        to = re.search(r"<code>(.*?)</code>", row)
        if number and to and len(cells) >= 3:
            found.append({"number": number.group(1), "channel": cells[2].strip(), "to": to.group(1)})
    return found


def _until(check: object, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while True:
        found = check()  # type: ignore[operator]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_the_readme_quick_start_runs_as_written(vhost: str) -> None:
    commands = quick_start_commands((ROOT / "README.md").read_text())[2:]  # after `make run` and `make test`
    env_of_run = run_target_environment((ROOT / "Makefile").read_text())
    port = free_port()
    address = f"127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        example = (ROOT / env_of_run["SHIPCAST_CONFIG"]).read_text()
        assert DEFAULT_ADDRESS in example, "the demo partner's receiver is on shipcast's default address"
        (home / "deploy").mkdir()
        (home / env_of_run["SHIPCAST_CONFIG"]).write_text(example.replace(DEFAULT_ADDRESS, address))
        env = {key: value for key, value in os.environ.items() if not key.startswith("SHIPCAST_")}
        env |= env_of_run | {"SHIPCAST_PORT": str(port), "SHIPCAST_PUBLIC_URL": f"http://{address}",
                             "SHIPCAST_AMQP_URL": f"amqp://guest:guest@{AMQP_HOST}/{vhost}",
                             "SHIPCAST_LOG_FORMAT": "text", "PATH": f"{bin_dir}:{env.get('PATH', '')}"}
        log = (home / "run.log").open("w+b")
        process = subprocess.Popen([str(bin_dir / "shipcast"), "run"], cwd=home, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            def output() -> str:
                return (home / "run.log").read_text(errors="replace")

            def ready() -> bool:
                try:
                    return httpx.get(f"http://{address}/readyz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            assert _until(ready, 60), output()
            assert "applied 1 partners from deploy/partners.example.yaml" in output()
            assert "development outbox in use: email, sms, whatsapp" in output()
            link = re.search(r"http://\S+/portal/signin\?token=\S+", output())
            assert link is not None, output()

            said: dict[str, str] = {}
            for written in commands:
                command = written.replace(".venv/bin/", f"{bin_dir}/").replace(DEFAULT_ADDRESS, address)

                def run(command: str = command) -> subprocess.CompletedProcess[str]:
                    return subprocess.run(["bash", "-c", command], cwd=home, env=env, capture_output=True,
                                          text=True, timeout=60)
                done = run()
                deadline = time.monotonic() + 30
                # A listing shows what the event became once the workers have delivered it: asked again till then.
                while done.returncode == 0 and not settled(command, done.stdout) and time.monotonic() < deadline:
                    time.sleep(0.3)
                    done = run()
                assert done.returncode == 0, (written, done.stdout, done.stderr)
                said[written] = done.stdout

            posted = next(out for cmd, out in said.items() if "/v1/events" in cmd)
            [event_id] = orjson.loads(posted)["ids"]
            listings = {cmd.split("--channel ")[-1] if "--channel" in cmd else cmd: out
                        for cmd, out in said.items() if " list" in cmd}
            receiver = listings["webhook-receiver"]
            assert f"verified {event_id}" in receiver and "NOT verified" not in receiver
            assert "+919876543210" in listings["sms"] and "priya@example.com" in listings["email"]
            deliveries = next(out for cmd, out in listings.items() if "deliveries list" in cmd)
            for channel in ("webhook", "sms", "email"):
                assert re.search(rf"delivered\s+{channel}\s+demo", deliveries), deliveries

            # The SMS as kept: the tracking page link, which opens.
            number = re.search(r"^(\d+)\s", listings["sms"], flags=re.MULTILINE)
            assert number is not None
            shown = subprocess.run([str(bin_dir / "shipcast"), "outbox", "show", number.group(1)], cwd=home,
                                   env=env, capture_output=True, text=True, timeout=60).stdout
            tracking = re.search(rf"http://{re.escape(address)}/t/\S+", shown)
            assert tracking is not None, shown
            assert httpx.get(tracking.group(0), timeout=10).status_code == 200

            # The portal, through the link `shipcast run` printed: the outbox, with the banner.
            with httpx.Client(base_url=f"http://{address}", timeout=10) as browser:
                token = link.group(0).split("token=", 1)[1]
                assert browser.post("/portal/signin", data={"token": token}).status_code == 303
                page = browser.get("/portal/p/demo/outbox")
                assert page.status_code == 200 and 'class="dev-banner"' in page.text
                assert "signature verified" in page.text and "priya@example.com" in page.text
                # The README's event as the portal shows it: its SMS to the customer's phone, its
                # email, each on its own page with the order's tracking page link, which opens.
                [written_to] = [re.search(r"> *(\S+\.json)", cmd) for cmd in commands if "--example" in cmd]
                assert written_to is not None
                sent = orjson.loads((home / written_to.group(1)).read_text())
                customer, order = sent["order"]["customer"], sent["order"]
                rows = outbox_rows(page.text)
                for channel, to in (("sms", customer["phone"]), ("email", customer["email"])):
                    [number] = [row["number"] for row in rows if row["channel"] == channel and row["to"] == to]
                    message = browser.get(f"/portal/p/demo/outbox/{number}")
                    assert message.status_code == 200, message.text
                    assert f"<code>{sent['event_id']}</code> OFD · order {order['order_id']}" in message.text
                    assert f"<code>{to}</code>" in message.text
                    text = re.search(r'<pre class="message">(.*?)</pre>', message.text, flags=re.DOTALL)
                    assert text is not None and order["order_id"] in text.group(1), message.text
                    link = re.search(rf"http://{re.escape(address)}/t/[\w-]+", text.group(1))
                    assert link is not None, (channel, text.group(1))
                    opened = httpx.get(link.group(0), timeout=10)  # the order's page, under the name it shows
                    shown_as = order["merchant_order_ref"] or order["order_id"]
                    assert opened.status_code == 200 and shown_as in opened.text, opened.text
                    if channel == "email":  # the HTML part too, as the customer sees it
                        html = browser.get(f"/portal/p/demo/outbox/{number}/html")
                        assert f'href="{link.group(0)}"' in html.text, html.text
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
            log.close()
        assert process.returncode == 0, output()

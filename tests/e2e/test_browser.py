"""A meeting in a real browser: the /demo page in headless Chromium, two users, one server.

The pages do what a Carbonio web client does (see control_api/static/demo.js); the test clicks
their buttons like a user and reads what they show and what their peer connections decoded.
Chromium is Debian's (/usr/bin/chromium, installed by scripts/test), driven by playwright.
A screenshot of each page is kept in test-artifacts/.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from tests.helpers import ServerHandle, new_id, start_server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
    # Media from fake devices, no permission prompts; screen capture picks the whole screen.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--auto-select-desktop-capture-source=Entire screen",
    "--autoplay-policy=no-user-gesture-required",
    # Our ICE candidates are on 127.0.0.1, which Chromium refuses unless told.
    "--allow-loopback-in-peer-connection",
    # No DNS lookups of its own (the server is addressed by IP).
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
]

pytestmark = pytest.mark.timeout(120)

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed (pip install -e '.[test]')"
)


@pytest.fixture
async def server(tmp_path) -> AsyncIterator[ServerHandle]:
    handle = await start_server(tmp_path)
    try:
        yield handle
    finally:
        await asyncio.wait_for(handle.stop(), 20)


def tone_wav(path: Path, seconds: float = 2.0, rate: int = 48000) -> Path:
    """A steady 440 Hz tone at -12 dBFS: Chromium's own fake microphone only beeps for 20 ms
    every half second, too short to count as talking."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.25 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


@pytest.fixture
async def browser(tmp_path) -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium is not installed at {CHROMIUM} (scripts/test installs it with apt-get)")
    microphone = tone_wav(tmp_path / "tone.wav")
    async with playwright_api.async_playwright() as pw:
        try:
            # launch() gives the browser a fresh temporary profile of its own.
            browser = await pw.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={microphone}"],
                timeout=30000,
            )
        except playwright_api.Error as exc:
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {exc}")
        try:
            yield browser
        finally:
            await browser.close()


class User:
    """One person at the demo page, in a browser context of his own (own storage, own tabs)."""

    def __init__(self, name: str, page: Any) -> None:
        self.name = name
        self.page = page
        self.errors: list[str] = []
        self.user_id = ""
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    @classmethod
    async def open(cls, browser: Any, url: str, name: str, *, bypass_csp: bool = True) -> User:
        # The page's CSP forbids eval, which playwright's polling waits use: let the test in
        # (test_page_works_under_its_csp checks the page under its CSP).
        context = await browser.new_context(
            viewport={"width": 1280, "height": 860}, bypass_csp=bypass_csp
        )
        page = await context.new_page()
        page.set_default_timeout(15000)
        user = cls(name, page)
        await page.goto(url)
        return user

    async def sign_in(self, role: str) -> None:
        await self.page.fill("#name", self.name)
        await self.page.select_option("#role", role)
        await self.page.click("#mint")
        await self.wait_status("ready")
        self.user_id = await self.page.input_value("#userId")

    async def click(self, selector: str) -> None:
        await self.page.click(selector)

    async def wait_status(self, state: str, timeout: float = 15000) -> None:
        await self.page.wait_for_function(
            "s => document.getElementById('status').dataset.state === s || "
            "document.getElementById('status').textContent === s",
            arg=state,
            timeout=timeout,
        )

    async def log_text(self) -> str:
        return await self.page.text_content("#log") or ""  # the log is folded away

    async def participants(self) -> list[str]:
        return await self.page.eval_on_selector_all(
            "#participants li", "items => items.map(li => li.dataset.user)"
        )

    async def wait_participants(self, expected: set[str]) -> None:
        try:
            await self.page.wait_for_function(
                "ids => { const now = [...document.querySelectorAll('#participants li')]"
                ".map(li => li.dataset.user).sort(); return JSON.stringify(now) === "
                "JSON.stringify(ids); }",
                arg=sorted(expected),
            )
        except playwright_api.Error:
            raise AssertionError(
                f"{self.name} sees {await self.participants()}, expected {sorted(expected)}"
            ) from None

    async def wait_tile(self, key: str, state: str = "visible") -> None:
        """Waits for the video tile of "<userId>/<video|screen>" to be shown (or gone)."""
        try:
            await self.page.wait_for_selector(f'.tile[data-key="{key}"]', state=state)
        except playwright_api.Error:
            raise AssertionError(
                f"{self.name}: tile {key} not {state}; page log:\n{await self.log_text()}"
            ) from None

    async def inbound(self) -> dict[str, list[dict[str, Any]]]:
        return await self.page.evaluate("window.demo.inboundStats()")

    async def screenshot(self, test: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{test}-{self.name.lower()}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path

    def check_no_page_errors(self) -> None:
        assert not self.errors, f"{self.name}'s page raised: {self.errors}"


async def host_and_guest(
    browser: Any, server: ServerHandle, meeting_type: str, bob_role: str = "member"
) -> tuple[User, User]:
    """Alice (room owner) creates and starts a meeting and joins it; Bob opens her invite link
    as a member of her room, or with `bob_role="none"` as a guest who knows only the link."""
    alice = await User.open(browser, server.url + "/demo", "Alice")
    await alice.sign_in("owner")
    await alice.page.select_option("#meetingType", meeting_type)
    await alice.click("#create")
    await alice.page.wait_for_selector("#start:not([hidden])")
    await alice.click("#start")
    await alice.page.wait_for_selector("#join:not([hidden])")
    await alice.click("#join")
    await alice.wait_status("joined")
    await alice.page.wait_for_selector("#setup:not([open])", state="attached")  # folded away
    invite = await alice.page.get_attribute("#invite", "href")
    assert invite and re.search(r"/demo#room=[0-9a-f-]{36}&meeting=[0-9a-f-]{36}$", invite), invite
    bob = await User.open(browser, invite, "Bob")
    await bob.sign_in(bob_role)
    if meeting_type == "scheduled" or bob_role != "none":
        await bob.page.wait_for_selector("#join:not([hidden])")
    return alice, bob


async def media_plane(server: ServerHandle) -> dict[str, int]:
    """HTTP status of a publish and an audio offer with a nonsense SDP: 501 = not available."""
    user, room = new_id(), new_id()
    token = server.token(user, {room: "owner"})
    _, meeting = await server.call(
        "POST", "/meetings", token, {"name": "probe", "roomId": room, "meetingType": "permanent"}
    )
    path = f"/meetings/{meeting['id']}"
    await server.call("POST", path + "/start", token)
    events = await server.events(token)
    await server.call(
        "POST", path + "/join", token, {"audioStreamEnabled": False, "videoStreamEnabled": False},
        headers={"queue-id": events.queue_id},
    )
    video, _ = await server.call(
        "PUT", path + "/media", token, {"type": "video", "enabled": True, "sdp": "v=0"}
    )
    audio, _ = await server.call("PUT", path + "/audio/offer", token, {"sdp": "v=0"})
    await server.call("DELETE", path, token)
    await events.close()
    return {"video": video, "audio": audio}


async def grows(user: User, kind: str, field: str, *, within: float = 20.0) -> list[dict]:
    """Waits until every inbound `kind` stream of the page has `field` > 0 and still growing."""
    deadline = asyncio.get_running_loop().time() + within
    first: dict | None = None
    while asyncio.get_running_loop().time() < deadline:
        now = {s["mid"]: s for s in (await user.inbound())[kind]}
        if now and all((s.get(field) or 0) > 0 for s in now.values()):
            if first is None:
                first = now
            elif all((now[m].get(field) or 0) > (first[m].get(field) or 0) for m in first):
                return list(now.values())
        await asyncio.sleep(0.5)
    raise AssertionError(
        f"{user.name}: inbound {kind} {field} did not grow: {await user.inbound()}\n"
        f"page log:\n{await user.log_text()}"
    )


# --- control plane ---------------------------------------------------------------------------


async def test_demo_page_and_token_endpoint(server):
    status, body = await server.call("GET", "/demo")
    assert status == 200 and "demo.js" in body
    for name in ("demo.js", "demo.css", "favicon.svg"):
        status, _ = await server.call("GET", f"/demo/{name}")
        assert status == 200
    status, _ = await server.call("GET", "/demo/../app.py")
    assert status == 404
    room, user = new_id(), new_id()
    status, minted = await server.call(
        "POST", "/demo/token", json={"userId": user, "rooms": {room: "owner"}}
    )
    assert status == 200 and minted["userId"] == user
    principal = server.authority.verify(minted["token"])
    assert principal.user_id == user and principal.grants == {room: "owner"}
    # Only for loopback clients, not through a proxy, not for other sites.
    status, _ = await server.call("POST", "/demo/token", headers={"X-Forwarded-For": "192.0.2.1"})
    assert status == 403
    status, _ = await server.call("POST", "/demo/token", headers={"Origin": "http://evil.example"})
    assert status == 403
    status, _ = await server.call("POST", "/demo/token", json={"rooms": {room: "admin"}})
    assert status == 400


async def test_demo_off_in_production(tmp_path):
    server = await start_server(tmp_path, demo={"enabled": False})
    try:
        assert (await server.call("GET", "/demo"))[0] == 404
        assert (await server.call("POST", "/demo/token", json={}))[0] == 404
    finally:
        await server.stop()


async def test_waiting_room_accept_then_leave(server, browser):
    # Bob comes as a guest; once accepted he is a member of the room and sees the meeting.
    alice, bob = await host_and_guest(browser, server, "scheduled", bob_role="none")
    await bob.click("#join")
    await bob.wait_status("waiting")

    # Alice is told, sees Bob in her waiting room and lets him in; his page joins again.
    waiting = await alice.page.wait_for_selector(f'#waiting li[data-user="{bob.user_id}"]')
    assert "Bob" in await waiting.inner_text()  # his name, from the event and the queue
    await alice.screenshot("waiting-room-queue")
    await bob.screenshot("waiting-room-queue")
    await alice.page.click(f'#waiting li[data-user="{bob.user_id}"] button.accepted')
    await bob.wait_status("joined")
    both = {alice.user_id, bob.user_id}
    await alice.wait_participants(both)
    await bob.wait_participants(both)
    assert "MEETING_WAITING_PARTICIPANT_JOINED" in await alice.log_text()
    await alice.page.wait_for_selector("#waitingBox", state="hidden")
    await alice.screenshot("waiting-room")
    await bob.screenshot("waiting-room")

    await bob.click("#leave")
    await alice.wait_participants({alice.user_id})
    assert "MEETING_PARTICIPANT_LEFT" in await alice.log_text()
    alice.check_no_page_errors()
    bob.check_no_page_errors()


async def test_guest_in_waiting_room_rejected(server, browser):
    # A guest may not read the meeting: the page shows its public view and joins the queue.
    alice, bob = await host_and_guest(browser, server, "scheduled", bob_role="none")
    await bob.click("#join")
    await bob.wait_status("waiting")
    await alice.page.click(f'#waiting li[data-user="{bob.user_id}"] button.rejected')
    await bob.wait_status("error")
    assert "turned you away" in await bob.page.inner_text("#status")
    await alice.wait_participants({alice.user_id})


async def test_guest_with_a_permanent_meetings_invite_is_told_why(server, browser):
    # A permanent meeting has no waiting room: the guest gets an explanation, not a red 404.
    alice, bob = await host_and_guest(browser, server, "permanent", bob_role="none")
    notice = await bob.page.wait_for_selector("#notice")
    text = await notice.inner_text()
    assert "no waiting room" in text and "permanent" in text and "scheduled" in text, text
    assert await bob.page.is_hidden("#join") and await bob.page.is_hidden("#start")
    assert await bob.page.query_selector_all("#log li.error") == []
    await bob.screenshot("permanent-invite")
    bob.check_no_page_errors()


async def test_page_works_under_its_csp(server, browser):
    # Selector waits only: they need no eval, which the page's CSP forbids.
    alice = await User.open(browser, server.url + "/demo", "Alice", bypass_csp=False)
    console: list[str] = []
    alice.page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    await alice.page.fill("#name", "Alice")
    await alice.click("#mint")
    await alice.page.wait_for_selector('link[rel="icon"][href="/demo/favicon.svg"]', state="attached")
    await alice.page.wait_for_selector("#create:not([disabled])")
    await alice.click("#create")
    await alice.page.wait_for_selector("#start:not([disabled])")
    await alice.screenshot("lobby")
    await alice.click("#start")
    await alice.page.wait_for_selector("#join:not([disabled])")
    await alice.click("#join")
    await alice.page.wait_for_selector('#status[data-state="joined"]')
    await alice.page.wait_for_selector("#participants li")
    assert not [c for c in console if "Content Security Policy" in c], console
    alice.check_no_page_errors()


# --- media -----------------------------------------------------------------------------------


async def test_two_browsers_see_each_other(server, browser):
    if (status := (await media_plane(server))["video"]) == 501:
        pytest.skip(f"the video media plane is not available yet (PUT /media answers {status})")
    alice, bob = await host_and_guest(browser, server, "permanent")
    # Alice's camera is on before Bob comes: his page finds it in the meeting's participants.
    # Bob's comes on after: Alice's page subscribes on MEETING_MEDIA_STREAM_CHANGED.
    await alice.click("#camera")
    await alice.page.wait_for_selector('#camera[aria-pressed="true"]')
    await bob.click("#join")
    await bob.wait_status("joined")
    await alice.wait_participants({alice.user_id, bob.user_id})
    # Buttons only for what one may do: Bob (a member) may not record nor mute others.
    assert await bob.page.is_hidden("#record") and await alice.page.is_visible("#record")
    await bob.click("#camera")

    # Each page places the other's camera by msid "<userId>/video" and decodes it.
    await alice.wait_tile(f"{bob.user_id}/video")
    await bob.wait_tile(f"{alice.user_id}/video")
    for user in (alice, bob):
        (video,) = await grows(user, "video", "framesDecoded")
        # a simulcast layer of the 1280x720 camera request (the lowest first: DESIGN §6.1)
        assert video["frameWidth"] in (320, 640, 1280), video
    # The remote tile really plays (not a black box): its <video> has a size and advances.
    playing = (
        "el => el.videoWidth > 0 && el.readyState >= 2 && el.currentTime > 0 && !el.paused"
    )
    await alice.page.wait_for_function(
        f"document.querySelector('.tile[data-key=\"{bob.user_id}/video\"] video') && "
        f"({playing})(document.querySelector('.tile[data-key=\"{bob.user_id}/video\"] video'))"
    )
    # Tiles carry names, in a stable order: one's own first, then by the time of joining.
    bob_tile = f'.tile[data-key="{bob.user_id}/video"]'
    assert await alice.page.inner_text(bob_tile + " .label .name") == "Bob"
    assert "Alice (you)" in await alice.page.inner_text(f'.tile[data-key="{alice.user_id}/video"] .label')
    order = await alice.page.eval_on_selector_all(
        "#videos .tile", "tiles => tiles.map(t => [t.dataset.user, Number(t.style.order)])"
    )
    assert sorted(order, key=lambda t: t[1])[0][0] == alice.user_id, order
    assert "Alice" in await bob.page.inner_text("#participants")
    # Each received stream shows its resolution (it follows the simulcast layer).
    res = f'.tile[data-key="{bob.user_id}/video"] .label .res'
    await alice.page.wait_for_function(
        f"/ \\d+x\\d+$/.test(document.querySelector('{res}')?.textContent ?? '')"
    )
    await asyncio.sleep(0.5)  # a few frames painted for the screenshot
    await alice.screenshot("video")
    await bob.screenshot("video")

    # Alice turns her camera off and on: Bob's receive PC is renegotiated each time (the m-line
    # goes inactive, then is reused under the same msid), and her video comes back.
    alice_tile = f'.tile[data-key="{alice.user_id}/video"]'
    await alice.click("#camera")
    await bob.page.wait_for_selector(alice_tile, state="detached")
    await alice.click("#camera")
    await bob.page.wait_for_selector(alice_tile)
    await grows(bob, "video", "framesDecoded")

    # Bob shares his screen: Alice gets a second stream, placed as "<bob>/screen".
    await bob.click("#screen")
    await alice.page.wait_for_selector(f'.tile[data-key="{bob.user_id}/screen"]')
    videos = await grows(alice, "video", "framesDecoded")
    assert len(videos) == 2, videos
    await asyncio.sleep(0.5)  # a few frames painted for the screenshot
    await alice.screenshot("screen")

    # Alice (the moderator) records a moment of it, under the name and folder she typed.
    await alice.page.fill("#recName", "standup")
    await alice.page.fill("#recFolder", "team")
    await alice.click("#record")
    await alice.page.wait_for_selector("#recording", state="visible")
    await bob.page.wait_for_selector("#recording", state="visible")  # everyone is told
    # Each track enters the file at its first keyframe, asked for when recording starts (and
    # throttled to one request per 500 ms per publisher): 3 s leaves room on a loaded machine.
    await asyncio.sleep(3.0)
    await alice.click("#record")
    await alice.page.wait_for_selector("#recording", state="hidden")
    toast = await alice.page.wait_for_selector("#toast")
    assert "Recording saved as team/standup.mkv" in await toast.inner_text()
    await alice.screenshot("recording-saved")
    recording = server.config.recording_path / "team" / "standup.mkv"
    for _ in range(50):
        if recording.exists() and recording.stat().st_size > 0:
            break
        await asyncio.sleep(0.1)
    assert recording.exists() and recording.stat().st_size > 10_000, (
        f"no recording at {recording}: {await alice.log_text()}"
    )
    with av.open(str(recording)) as container:  # Alice's camera, Bob's camera and screen
        assert len(container.streams.video) == 3, container.streams

    # Bob leaves: his tiles and his name go from Alice's page.
    await bob.click("#leave")
    await alice.page.wait_for_selector(f'.tile[data-user="{bob.user_id}"]', state="detached")
    await alice.wait_participants({alice.user_id})
    alice.check_no_page_errors()
    bob.check_no_page_errors()


async def test_two_browsers_hear_each_other(server, browser):
    if (status := (await media_plane(server))["audio"]) == 501:
        pytest.skip(
            f"the audio bridge is not available yet (PUT /audio/offer answers {status})"
        )
    alice, bob = await host_and_guest(browser, server, "permanent")
    await bob.click("#join")
    await bob.wait_status("joined")
    for user in (alice, bob):
        await user.page.wait_for_selector("#mic:not([disabled])")
        await user.click("#mic")  # joined muted: unmute
        await user.page.wait_for_selector('#mic[aria-pressed="true"]')
    # Each hears the mix of everyone else: here, the other's fake microphone.
    for user in (alice, bob):
        await grows(user, "audio", "packetsReceived")
        await grows(user, "audio", "totalAudioEnergy")
    await alice.screenshot("audio")
    await bob.screenshot("audio")
    # Bob's microphone plays a steady tone: Alice's page shows him talking.
    await alice.page.wait_for_selector(
        f'#participants li.talking[data-user="{bob.user_id}"]', timeout=10000
    )
    await alice.page.wait_for_selector(f'.tile.talking[data-user="{bob.user_id}"]', timeout=10000)
    await alice.screenshot("talking")

    # A moderator mutes Bob: Bob's page shows it.
    await alice.page.click(f'#participants li[data-user="{bob.user_id}"] button.mute')
    await bob.page.wait_for_selector('#mic[aria-pressed="false"]')
    assert "muted you" in await bob.log_text()
    with contextlib.suppress(Exception):
        await bob.click("#leave")
    await alice.wait_participants({alice.user_id})
